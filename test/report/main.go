// Command report turns the `go test -json` streams of the test tiers into what `make test`
// prints: a short live log, and one summary at the end.
//
//	go test -json ./... 2>&1 | report stream -tier unit -o .cache/test-results/unit.json
//	report summary .cache/test-results
//
// stream prints package results and the output of failed tests as they come, keeps the stream
// in a file, and fails when a test failed. summary reads the files of every tier (verify, unit,
// integration, e2e, fuzz, in that order), prints passed, failed and skipped tests per tier,
// every skipped test with its reason, and closes with `N passed, N failed, N skipped` and
// `DONE N tests, N skipped, N failures` (gotestsum's closing line, always with all three
// counts). In CI (test/ci) both fail on a skip in the integration or e2e tier that
// test/ci/allowed-skips.yaml does not allow.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kybernate/kybernate/test/ci"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout))
}

func run(args []string, stdin io.Reader, stdout io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: report stream -tier NAME -o FILE | report summary DIR")
		return 2
	}
	list, err := ci.AllowedSkips()
	if err != nil {
		fmt.Fprintf(os.Stderr, "report: %v\n", err)
		return 1
	}
	cfg := config{inCI: ci.Enabled(), allowList: list, kernel: ci.KernelRelease()}
	switch args[0] {
	case "stream":
		fs := flag.NewFlagSet("stream", flag.ContinueOnError)
		name := fs.String("tier", "", "the tier's name (verify, unit, integration, e2e, fuzz)")
		out := fs.String("o", "", "file to keep the go test -json stream in")
		if err := fs.Parse(args[1:]); err != nil || *name == "" || *out == "" {
			fmt.Fprintln(os.Stderr, "usage: report stream -tier NAME -o FILE")
			return 2
		}
		if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
			fmt.Fprintf(os.Stderr, "report: %v\n", err)
			return 1
		}
		f, err := os.Create(*out)
		if err != nil {
			fmt.Fprintf(os.Stderr, "report: %v\n", err)
			return 1
		}
		defer f.Close()
		return stream(cfg, *name, stdin, f, stdout)
	case "summary":
		fs := flag.NewFlagSet("summary", flag.ContinueOnError)
		want := fs.String("tiers", "", "tiers that must have results, space-separated; one without fails the run")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 1 {
			fmt.Fprintln(os.Stderr, "usage: report summary [-tiers 'verify unit ...'] DIR")
			return 2
		}
		tiers, err := readTiers(fs.Arg(0), strings.Fields(*want))
		if err != nil {
			fmt.Fprintf(os.Stderr, "report: %v\n", err)
			return 1
		}
		return summary(cfg, tiers, stdout)
	}
	fmt.Fprintf(os.Stderr, "report: unknown command %q\n", args[0])
	return 2
}

// config is what the CI check needs: whether this is CI, the allow-list and the kernel.
type config struct {
	inCI      bool
	allowList []ci.AllowedSkip
	kernel    string
}

// stream copies the go test -json stream in to keep and prints a short log to out: package
// lines (ok, FAIL, TestMain's output), the whole output of each failed test, and lines that
// are not events (build errors). It returns 1 when a test failed or CI forbids a skip.
func stream(cfg config, name string, in io.Reader, keep, out io.Writer) int {
	t := newTier(name)
	w := bufio.NewWriter(keep)
	err := t.read(in, func(line string, e *event) {
		fmt.Fprintln(w, line)
		switch {
		case e == nil:
			fmt.Fprintln(out, line)
		case e.Test == "" && (e.Action == "output" || e.Action == "build-output"):
			if s := strings.TrimRight(e.Output, "\n"); s != "PASS" && s != "FAIL" {
				fmt.Fprintln(out, s)
			}
		case e.Test != "" && e.Action == "fail":
			if r := t.running[e.Package+"\x00"+e.Test]; r != nil {
				fmt.Fprintln(out, strings.Join(r.Output, "\n"))
			}
		case e.Test == "" && e.Action == "fail":
			// A package that ends with tests still running (a timeout's panic, a crash): what
			// they printed says where they were.
			for _, r := range t.runningIn(e.Package) {
				fmt.Fprintln(out, strings.Join(r.Output, "\n"))
			}
		}
	})
	if ferr := w.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		fmt.Fprintf(out, "report: reading the go test -json stream: %v\n", err)
		return 1
	}
	t.finish()
	code := 0
	if t.counts().Failed > 0 || len(t.failedPkgs) > 0 {
		code = 1
	}
	if check := t.checkSkips(cfg.inCI, cfg.allowList, cfg.kernel); len(check.Forbidden) > 0 {
		printForbidden(out, t.Name, check.Forbidden, cfg.kernel)
		code = 1
	}
	return code
}

// tierOrder is the order of make test; other files in the folder follow by name.
var tierOrder = []string{"verify", "unit", "integration", "e2e", "fuzz"}

// readTiers reads the kept streams, DIR/<tier>.json. A tier of want without a file did not
// run (its setup failed before go test): it is there, with missing set.
func readTiers(dir string, want []string) ([]*tier, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(files))
	for _, f := range files {
		names = append(names, strings.TrimSuffix(filepath.Base(f), ".json"))
	}
	var missing []string
	for _, w := range want {
		if !slices.Contains(names, w) {
			names = append(names, w)
			missing = append(missing, w)
		}
	}
	slices.SortFunc(names, func(a, b string) int {
		ia, ib := slices.Index(tierOrder, a), slices.Index(tierOrder, b)
		if ia < 0 {
			ia = len(tierOrder)
		}
		if ib < 0 {
			ib = len(tierOrder)
		}
		if ia != ib {
			return ia - ib
		}
		return strings.Compare(a, b)
	})
	var tiers []*tier
	for _, name := range names {
		if slices.Contains(missing, name) {
			t := newTier(name)
			t.missing = true
			tiers = append(tiers, t)
			continue
		}
		f, err := os.Open(filepath.Join(dir, name+".json"))
		if err != nil {
			return nil, err
		}
		t := newTier(name)
		err = t.read(f, nil)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name(), err)
		}
		t.finish()
		tiers = append(tiers, t)
	}
	return tiers, nil
}

// summary prints the table of tiers, the failed and skipped tests and the closing lines; it
// returns 1 when a test failed or CI forbids a skip.
func summary(cfg config, tiers []*tier, out io.Writer) int {
	fmt.Fprintln(out)
	fmt.Fprintln(out, "== test summary")
	fmt.Fprintf(out, "%-12s %7s %7s %7s\n", "tier", "passed", "failed", "skipped")
	var total counts
	var failedTests []*testResult
	type skip struct {
		tier   string
		r      *testResult
		reason string // the allow-list's, when CI allowed it
	}
	var skips []skip
	forbidden, notRun := 0, 0
	for _, t := range tiers {
		if t.missing {
			fmt.Fprintf(out, "%-12s did not run: its setup failed before go test (see its log above)\n", t.Name)
			notRun++
			continue
		}
		c := t.counts()
		fmt.Fprintf(out, "%-12s %7d %7d %7d\n", t.Name, c.Passed, c.Failed, c.Skipped)
		total.Passed += c.Passed
		total.Failed += c.Failed
		total.Skipped += c.Skipped
		check := t.checkSkips(cfg.inCI, cfg.allowList, cfg.kernel)
		for _, r := range t.Results {
			switch r.Status {
			case failed:
				failedTests = append(failedTests, r)
			case skipped:
				skips = append(skips, skip{tier: t.Name, r: r, reason: check.Allowed[r]})
			}
		}
		if len(check.Forbidden) > 0 {
			printForbidden(out, t.Name, check.Forbidden, cfg.kernel)
			forbidden += len(check.Forbidden)
		}
	}
	if len(tiers) == 0 {
		fmt.Fprintln(out, "(no results)")
	}
	if len(skips) > 0 {
		fmt.Fprintf(out, "\n== skipped (%d)\n", len(skips))
		for _, s := range skips {
			mark := ""
			if s.reason != "" {
				mark = "ALLOWED IN CI (" + s.reason + "): "
			}
			fmt.Fprintf(out, "  [%s] %s: %s%s\n", s.tier, s.r.name(), mark, s.r.reason())
		}
	}
	if len(failedTests) > 0 {
		fmt.Fprintf(out, "\n== failed (%d)\n", len(failedTests))
		for _, r := range failedTests {
			fmt.Fprintf(out, "  %s\n", r.name())
		}
	}
	fmt.Fprintln(out)
	// A tier that did not run counts as one failure: it had tests, and none of them passed.
	failures := total.Failed + forbidden + notRun
	fmt.Fprintf(out, "%d passed, %d failed, %d skipped\n", total.Passed, failures, total.Skipped)
	// Always the same words, whatever the numbers, for the patterns that CI tools match.
	fmt.Fprintf(out, "DONE %d tests, %d skipped, %d failures\n", total.Passed+total.Failed+total.Skipped+notRun, total.Skipped, failures)
	if failures > 0 || len(tiers) == 0 {
		return 1
	}
	return 0
}

func printForbidden(out io.Writer, tier string, rs []*testResult, kernel string) {
	fmt.Fprintf(out, "\n!!!!! %s: %d test(s) skipped in CI (CI=%s), which fails the run; fix the machine, or add an entry with its reason to test/ci/allowed-skips.yaml (kernel %s):\n",
		tier, len(rs), os.Getenv(ci.Env), kernel)
	for _, r := range rs {
		fmt.Fprintf(out, "  %s: %s\n", r.name(), r.reason())
	}
}
