package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kybernate/kybernate/test/ci"
)

// A go test -json stream as cmd/test2json writes it: a pass, a skip with its reason, a failed
// subtest, a package that fails in TestMain, a build error on stderr.
const e2eStream = `{"Action":"start","Package":"k/e2e"}
{"Action":"run","Package":"k/e2e","Test":"TestA"}
{"Action":"output","Package":"k/e2e","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"output","Package":"k/e2e","Test":"TestA","Output":"--- PASS: TestA (0.00s)\n"}
{"Action":"pass","Package":"k/e2e","Test":"TestA"}
{"Action":"run","Package":"k/e2e","Test":"TestCRIU"}
{"Action":"output","Package":"k/e2e","Test":"TestCRIU","Output":"=== RUN   TestCRIU\n"}
{"Action":"output","Package":"k/e2e","Test":"TestCRIU","Output":"    x_test.go:9: criu dump hangs on kernel 6.18\n"}
{"Action":"output","Package":"k/e2e","Test":"TestCRIU","Output":"--- SKIP: TestCRIU (0.00s)\n"}
{"Action":"skip","Package":"k/e2e","Test":"TestCRIU"}
{"Action":"run","Package":"k/e2e","Test":"TestB"}
{"Action":"run","Package":"k/e2e","Test":"TestB/sub"}
{"Action":"output","Package":"k/e2e","Test":"TestB/sub","Output":"    x_test.go:20: got 1, want 2\n"}
{"Action":"fail","Package":"k/e2e","Test":"TestB/sub"}
{"Action":"fail","Package":"k/e2e","Test":"TestB"}
{"Action":"output","Package":"k/e2e","Output":"FAIL\n"}
{"Action":"fail","Package":"k/e2e"}
# k/broken
broken/x.go:1:1: syntax error
{"Action":"output","Package":"k/main","Output":"framework: cluster did not start\n"}
{"Action":"fail","Package":"k/main"}
{"Action":"run","Package":"k/slow","Test":"TestHangs"}
{"Action":"output","Package":"k/slow","Test":"TestHangs","Output":"panic: test timed out after 20m0s\n"}
{"Action":"fail","Package":"k/slow"}
`

func TestStream(t *testing.T) {
	var keep, out bytes.Buffer
	code := stream(config{}, "e2e", strings.NewReader(e2eStream), &keep, &out)
	if code != 1 {
		t.Errorf("exit code %d, want 1 (tests failed)", code)
	}
	if diff := cmp.Diff(e2eStream, keep.String()); diff != "" {
		t.Errorf("kept stream (-want +got):\n%s", diff)
	}
	for _, want := range []string{"got 1, want 2", "syntax error", "framework: cluster did not start", "panic: test timed out"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "--- PASS: TestA") {
		t.Errorf("log shows a passed test's output:\n%s", out.String())
	}
}

func TestStreamForbidsSkipsInCI(t *testing.T) {
	const stream1 = `{"Action":"skip","Package":"k/e2e","Test":"TestCRIU"}
{"Action":"pass","Package":"k/e2e"}
`
	for _, tc := range []struct {
		name     string
		cfg      config
		tier     string
		wantCode int
	}{
		{"not CI", config{}, "e2e", 0},
		{"CI, unit tier", config{inCI: true}, "unit", 0},
		{"CI, e2e tier", config{inCI: true}, "e2e", 1},
		{"CI, allowed", config{inCI: true, kernel: "6.18", allowList: []ci.AllowedSkip{{Package: "k/e2e", Test: "TestCRIU", Kernel: "6.18", Reason: "r"}}}, "e2e", 0},
		{"CI, allowed on another kernel", config{inCI: true, kernel: "6.19", allowList: []ci.AllowedSkip{{Package: "k/e2e", Test: "TestCRIU", Kernel: "6.18", Reason: "r"}}}, "e2e", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var keep, out bytes.Buffer
			if got := stream(tc.cfg, tc.tier, strings.NewReader(stream1), &keep, &out); got != tc.wantCode {
				t.Errorf("exit code %d, want %d; log:\n%s", got, tc.wantCode, out.String())
			}
		})
	}
}

func TestSummary(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"e2e.json":  e2eStream,
		"unit.json": `{"Action":"pass","Package":"k/a","Test":"TestX"}` + "\n" + `{"Action":"pass","Package":"k/a"}` + "\n",
		"verify.json": `{"Action":"pass","Package":"hack/verify.sh","Test":"gofmt"}` + "\n" +
			`{"Action":"pass","Package":"hack/verify.sh","Test":"go vet"}` + "\n",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tiers, err := readTiers(dir, []string{"verify", "unit", "integration", "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if code := summary(config{inCI: true, kernel: "6.18"}, tiers, &out); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	want := `
== test summary
tier          passed  failed skipped
verify             2       0       0
unit               1       0       0
integration  did not run: its setup failed before go test (see its log above)
e2e                1       4       1

!!!!! e2e: 1 test(s) skipped in CI (CI=` + os.Getenv(ci.Env) + `), which fails the run; fix the machine, or add an entry with its reason to test/ci/allowed-skips.yaml (kernel 6.18):
  k/e2e.TestCRIU: x_test.go:9: criu dump hangs on kernel 6.18

== skipped (1)
  [e2e] k/e2e.TestCRIU: x_test.go:9: criu dump hangs on kernel 6.18

== failed (4)
  k/e2e.TestB/sub
  k/e2e.TestB
  k/slow.TestHangs
  k/main (package)

4 passed, 6 failed, 1 skipped
DONE 10 tests, 1 skipped, 6 failures
`
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("summary (-want +got):\n%s", diff)
	}
}

func TestSummaryAllGreen(t *testing.T) {
	u := newTier("unit")
	if err := u.read(strings.NewReader(`{"Action":"pass","Package":"k/a","Test":"TestX"}`+"\n"), nil); err != nil {
		t.Fatal(err)
	}
	u.finish()
	var out bytes.Buffer
	if code := summary(config{}, []*tier{u}, &out); code != 0 {
		t.Errorf("exit code %d, want 0:\n%s", code, out.String())
	}
	if !strings.HasSuffix(out.String(), "\n1 passed, 0 failed, 0 skipped\nDONE 1 tests, 0 skipped, 0 failures\n") {
		t.Errorf("closing lines:\n%s", out.String())
	}
}
