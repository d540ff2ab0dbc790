package main

import (
	"bufio"
	"encoding/json"
	"io"
	"slices"
	"strings"

	"github.com/kybernate/kybernate/test/ci"
)

// event is one line of `go test -json` (cmd/test2json), with the fields this tool reads.
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

// status is how a test ended.
type status string

const (
	passed  status = "pass"
	failed  status = "fail"
	skipped status = "skip"
)

// testResult is one test (or subtest, or a package that failed outside its tests) of a tier.
type testResult struct {
	Package, Test string
	Status        status
	// Output is what the test printed, in order.
	Output []string
}

// name is how the summary names the test.
func (r *testResult) name() string {
	if r.Test == "" {
		return r.Package + " (package)"
	}
	return r.Package + "." + r.Test
}

// reason is a skipped test's message: its output less go test's own framing lines.
func (r *testResult) reason() string {
	var parts []string
	for _, line := range r.Output {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "=== ") || strings.HasPrefix(line, "--- SKIP") {
			continue
		}
		parts = append(parts, line)
	}
	if len(parts) == 0 {
		return "(no reason given)"
	}
	return strings.Join(parts, " ")
}

// tier collects the results of one tier's go test -json stream.
type tier struct {
	Name    string
	Results []*testResult
	// missing is set for a tier that wrote no results: it did not get to go test.
	missing bool
	// running maps package + "\x00" + test to a test that has not ended yet.
	running map[string]*testResult
	// failedPkgs are packages that reported fail; testFailed those with a failed test.
	failedPkgs, testFailed map[string]bool
}

func newTier(name string) *tier {
	return &tier{Name: name, running: map[string]*testResult{}, failedPkgs: map[string]bool{}, testFailed: map[string]bool{}}
}

// add takes one event; it returns the test that the event ended, if any.
func (t *tier) add(e event) *testResult {
	if e.Test == "" {
		if e.Action == "fail" {
			t.failedPkgs[e.Package] = true
		}
		return nil
	}
	key := e.Package + "\x00" + e.Test
	r := t.running[key]
	if r == nil {
		r = &testResult{Package: e.Package, Test: e.Test}
		t.running[key] = r
	}
	switch status(e.Action) {
	case passed, failed, skipped:
		r.Status = status(e.Action)
		delete(t.running, key)
		t.Results = append(t.Results, r)
		if r.Status == failed {
			t.testFailed[e.Package] = true
		}
		return r
	}
	if e.Action == "output" {
		r.Output = append(r.Output, strings.TrimRight(e.Output, "\n"))
	}
	return nil
}

// runningIn lists the tests of pkg that have started and not ended, by name.
func (t *tier) runningIn(pkg string) []*testResult {
	var out []*testResult
	for _, r := range t.running {
		if r.Package == pkg {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b *testResult) int { return strings.Compare(a.Test, b.Test) })
	return out
}

// finish counts a package that failed without a failed test (a build failure, a failing
// TestMain, a panic or timeout) as one failure, and a test that never ended as failed.
func (t *tier) finish() {
	for _, r := range t.running {
		r.Status = failed
		t.Results = append(t.Results, r)
		t.testFailed[r.Package] = true
	}
	t.running = map[string]*testResult{}
	pkgs := make([]string, 0, len(t.failedPkgs))
	for p := range t.failedPkgs {
		if !t.testFailed[p] {
			pkgs = append(pkgs, p)
		}
	}
	slices.Sort(pkgs)
	for _, p := range pkgs {
		t.Results = append(t.Results, &testResult{Package: p, Status: failed})
	}
}

// read feeds the go test -json stream r into t; lines that are not events (a build's stderr)
// go to raw, if given.
func (t *tier) read(r io.Reader, onLine func(line string, e *event)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		var e event
		if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &e) != nil || e.Action == "" {
			if onLine != nil {
				onLine(line, nil)
			}
			continue
		}
		if onLine != nil {
			onLine(line, &e)
		}
		t.add(e)
	}
	return sc.Err()
}

// counts is passed, failed and skipped tests.
type counts struct{ Passed, Failed, Skipped int }

func (t *tier) counts() counts {
	var c counts
	for _, r := range t.Results {
		switch r.Status {
		case passed:
			c.Passed++
		case failed:
			c.Failed++
		case skipped:
			c.Skipped++
		}
	}
	return c
}

// strictTiers are the tiers where, in CI, a skip fails the run unless allowed (test/ci).
var strictTiers = map[string]bool{"integration": true, "e2e": true}

// skipCheck is what CI makes of a tier's skips.
type skipCheck struct {
	// Allowed are skips on the allow-list, with the entry's reason; Forbidden fail the run.
	Allowed   map[*testResult]string
	Forbidden []*testResult
}

// checkSkips applies the allow-list to the tier's skips when inCI and the tier is strict.
func (t *tier) checkSkips(inCI bool, list []ci.AllowedSkip, kernel string) skipCheck {
	c := skipCheck{Allowed: map[*testResult]string{}}
	if !inCI || !strictTiers[t.Name] {
		return c
	}
	for _, r := range t.Results {
		if r.Status != skipped {
			continue
		}
		if s, ok := ci.Allowed(list, r.Package, r.Test, kernel); ok {
			c.Allowed[r] = s.Reason
		} else {
			c.Forbidden = append(c.Forbidden, r)
		}
	}
	return c
}
