// Package ci decides, for every test tier, whether the tests run in CI and what a skip means
// there. CI is on when $CI parses as true with strconv.ParseBool (CI=true, CI=1, ...); `.ci/run`
// sets it.
//
// Outside CI a test that cannot run here (no root, no control plane, a kernel where CRIU cannot
// dump) skips with its reason, and the summary of `make test` lists it. In CI a skip in the
// integration or e2e tier is a failure, unless allowed-skips.yaml in this folder names the test
// (and, where given, the kernel release it applies to) with a reason. Tests call Skip instead of
// t.Skip; test/report checks the whole run against the same list, so a t.Skip that bypasses
// Skip fails the run too.
package ci

import (
	_ "embed"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/yaml"
)

// Env is the environment variable that turns CI on.
const Env = "CI"

// Enabled reports whether the tests run in CI: $CI parses as true (strconv.ParseBool).
func Enabled() bool {
	v, err := strconv.ParseBool(os.Getenv(Env))
	return err == nil && v
}

// AllowedSkip is an entry of allowed-skips.yaml: a test that may skip in CI, and why.
type AllowedSkip struct {
	// Package is the test's package import path, as go test -json reports it.
	Package string `json:"package"`
	// Test is the test's name; a parent test covers its subtests.
	Test string `json:"test"`
	// Kernel, when set, limits the entry to the machine whose kernel release (uname -r) it is.
	Kernel string `json:"kernel,omitempty"`
	// Reason says why the test cannot run in CI; it is printed with every skip.
	Reason string `json:"reason"`
}

type allowList struct {
	Skips []AllowedSkip `json:"skips"`
}

//go:embed allowed-skips.yaml
var allowedSkipsYAML []byte

// AllowedSkips returns the committed allow-list; an entry without a package, test or reason is
// an error.
func AllowedSkips() ([]AllowedSkip, error) {
	return parseAllowList(allowedSkipsYAML)
}

func parseAllowList(data []byte) ([]AllowedSkip, error) {
	var l allowList
	if err := yaml.UnmarshalStrict(data, &l); err != nil {
		return nil, fmt.Errorf("allowed-skips.yaml: %w", err)
	}
	for i, s := range l.Skips {
		if s.Package == "" || s.Test == "" || strings.TrimSpace(s.Reason) == "" {
			return nil, fmt.Errorf("allowed-skips.yaml: entry %d: package, test and reason are required", i)
		}
	}
	return l.Skips, nil
}

// Allowed returns the entry that allows test of package pkg to skip on a machine with kernel
// release kernel, if there is one.
func Allowed(list []AllowedSkip, pkg, test, kernel string) (AllowedSkip, bool) {
	for _, s := range list {
		if s.Package != pkg || (test != s.Test && !strings.HasPrefix(test, s.Test+"/")) {
			continue
		}
		if s.Kernel != "" && s.Kernel != kernel {
			continue
		}
		return s, true
	}
	return AllowedSkip{}, false
}

// KernelRelease is this machine's kernel release, as uname -r prints it.
func KernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// Skip skips t with reason outside CI. In CI it fails t with reason, unless the allow-list
// names the test (and this kernel); then it skips, giving the entry's reason too.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if !Enabled() {
		t.Skip(reason)
	}
	list, err := AllowedSkips()
	if err != nil {
		t.Fatalf("%s; and in CI a skip needs the allow-list, which does not load: %v", reason, err)
	}
	if s, ok := Allowed(list, testPackage(), t.Name(), KernelRelease()); ok {
		t.Skipf("ALLOWED SKIP IN CI (test/ci/allowed-skips.yaml: %s): %s", s.Reason, reason)
	}
	t.Fatalf("%s; in CI (%s=%s) this is a failure, not a skip (test/ci/allowed-skips.yaml does not list %s on kernel %s)",
		reason, Env, os.Getenv(Env), t.Name(), KernelRelease())
}

// testPackage is the import path of the test binary's package.
func testPackage() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	return strings.TrimSuffix(bi.Path, ".test")
}
