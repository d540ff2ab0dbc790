package thp

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	clocktesting "k8s.io/utils/clock/testing"
)

// fakeSysfs is a THP folder of plain files in the kernel's format: every choice, the current
// one in brackets. kernelWrite changes them as the kernel does.
func fakeSysfs(t *testing.T, enabled, defrag string) string {
	t.Helper()
	dir := t.TempDir()
	for name, v := range map[string]string{Enabled: enabled, Defrag: defrag} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// kernelWrite emulates a write to a THP setting: a word among the choices becomes the
// bracketed one; others are refused (EINVAL).
func kernelWrite(dir, name, value string) error {
	path := filepath.Join(dir, name)
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	words := strings.Fields(strings.NewReplacer("[", "", "]", "").Replace(string(b)))
	if !slices.Contains(words, value) {
		return fmt.Errorf("write %s=%s: %w", path, value, syscall.EINVAL)
	}
	for i, w := range words {
		if w == value {
			words[i] = "[" + w + "]"
		}
	}
	return os.WriteFile(path, []byte(strings.Join(words, " ")+"\n"), 0o644)
}

// current reads a setting of the fake folder.
func current(t *testing.T, dir, name string) string {
	t.Helper()
	v, err := Current(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func newWindow(t *testing.T, dir string, values map[string]string) (*Window, string) {
	t.Helper()
	state := filepath.Join(t.TempDir(), "state")
	w, err := New(Config{Dir: dir, StateDir: state, Values: values}, clocktesting.NewFakeClock(time.Unix(0, 0)))
	if err != nil {
		t.Fatal(err)
	}
	w.write = kernelWrite
	return w, state
}

func TestCurrent(t *testing.T) {
	for _, tc := range []struct {
		content, want string
		wantErr       bool
	}{
		{content: "always [madvise] never\n", want: "madvise"},
		{content: "[always] madvise never", want: "always"},
		{content: "always defer defer+madvise [madvise] never\n", want: "madvise"},
		{content: "always madvise never\n", wantErr: true},
		{content: "madvise\n", want: "madvise"},
		{content: "[]", wantErr: true},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, Enabled), []byte(tc.content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := Current(dir, Enabled)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("Current(%q) = %q, %v; want %q, error %v", tc.content, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestWindowOpensAndCloses(t *testing.T) {
	dir := fakeSysfs(t, "always [madvise] never", "always defer defer+madvise [madvise] never")
	w, state := newWindow(t, dir, map[string]string{Enabled: "always"})
	closeFn, err := w.Open(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if got := current(t, dir, Enabled); got != "always" {
		t.Errorf("enabled while open = %q, want always", got)
	}
	if got := current(t, dir, Defrag); got != "madvise" {
		t.Errorf("defrag while open = %q, want madvise (not the window's)", got)
	}
	b, err := os.ReadFile(filepath.Join(state, stateFile))
	if err != nil {
		t.Fatalf("no state file while the window is open: %v", err)
	}
	if want := `{"previous":{"enabled":"madvise"},"window":{"enabled":"always"}}`; string(b) != want {
		t.Errorf("state file = %s, want %s", b, want)
	}
	closeFn()
	closeFn() // a second call does nothing
	if got := current(t, dir, Enabled); got != "madvise" {
		t.Errorf("enabled after close = %q, want madvise", got)
	}
	if _, err := os.Stat(filepath.Join(state, stateFile)); !os.IsNotExist(err) {
		t.Errorf("state file after close: %v, want none", err)
	}
}

func TestWindowDefrag(t *testing.T) {
	dir := fakeSysfs(t, "always [madvise] never", "always defer defer+madvise [madvise] never")
	w, _ := newWindow(t, dir, map[string]string{Enabled: "always", Defrag: "defer+madvise"})
	closeFn, err := w.Open(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if e, d := current(t, dir, Enabled), current(t, dir, Defrag); e != "always" || d != "defer+madvise" {
		t.Errorf("while open: enabled=%q defrag=%q, want always, defer+madvise", e, d)
	}
	closeFn()
	if e, d := current(t, dir, Enabled), current(t, dir, Defrag); e != "madvise" || d != "madvise" {
		t.Errorf("after close: enabled=%q defrag=%q, want madvise, madvise", e, d)
	}
}

// Concurrent checkpoints share one window: it closes when the last one ends.
func TestWindowShared(t *testing.T) {
	dir := fakeSysfs(t, "always [madvise] never", "[madvise]")
	w, _ := newWindow(t, dir, map[string]string{Enabled: "always"})
	const n = 4
	closers := make([]func(), n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, err := w.Open(t.Context())
			if err != nil {
				t.Error(err)
				return
			}
			closers[i] = c
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i, c := range closers {
		if got := current(t, dir, Enabled); got != "always" {
			t.Fatalf("enabled with %d of %d holders left = %q, want always", n-i, n, got)
		}
		c()
	}
	if got := current(t, dir, Enabled); got != "madvise" {
		t.Errorf("enabled after the last close = %q, want madvise", got)
	}
	// A new window after the first closed changes the setting again.
	c, err := w.Open(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if got := current(t, dir, Enabled); got != "always" {
		t.Errorf("enabled in a second window = %q, want always", got)
	}
	c()
}

// A node that runs `always` already is left alone: no write, no state file.
func TestWindowNodeAlreadyAlways(t *testing.T) {
	dir := fakeSysfs(t, "[always] madvise never", "[madvise]")
	w, state := newWindow(t, dir, map[string]string{Enabled: "always"})
	c, err := w.Open(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(state, stateFile)); !os.IsNotExist(err) {
		t.Errorf("state file with nothing changed: %v, want none", err)
	}
	c()
	b, _ := os.ReadFile(filepath.Join(dir, Enabled))
	if string(b) != "[always] madvise never\n" {
		t.Errorf("enabled file = %q, want it untouched", b)
	}
}

// A setting someone changed while the window was open is theirs: the close leaves it.
func TestWindowLeavesAChangedSetting(t *testing.T) {
	dir := fakeSysfs(t, "always [madvise] never", "[madvise]")
	w, state := newWindow(t, dir, map[string]string{Enabled: "always"})
	c, err := w.Open(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := kernelWrite(dir, Enabled, "never"); err != nil {
		t.Fatal(err)
	}
	c()
	if got := current(t, dir, Enabled); got != "never" {
		t.Errorf("enabled = %q, want never (the admin's change)", got)
	}
	if _, err := os.Stat(filepath.Join(state, stateFile)); !os.IsNotExist(err) {
		t.Errorf("state file: %v, want none", err)
	}
}

// An open the kernel refuses leaves nothing changed and no state file, and reports it.
func TestWindowOpenFails(t *testing.T) {
	dir := fakeSysfs(t, "always [madvise] never", "always [madvise] never")
	w, state := newWindow(t, dir, map[string]string{Enabled: "always", Defrag: "sometimes"})
	if _, err := w.Open(t.Context()); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("Open with a defrag value the kernel refuses = %v, want EINVAL", err)
	}
	if got := current(t, dir, Enabled); got != "madvise" {
		t.Errorf("enabled after a failed open = %q, want madvise", got)
	}
	if _, err := os.Stat(filepath.Join(state, stateFile)); !os.IsNotExist(err) {
		t.Errorf("state file after a failed open: %v, want none", err)
	}
	// The next checkpoint tries again.
	if _, err := w.Open(t.Context()); err == nil {
		t.Error("second Open succeeded")
	}
}

// An agent that died with the window open: the next one puts the settings back at start.
func TestRecover(t *testing.T) {
	dir := fakeSysfs(t, "always [madvise] never", "always defer defer+madvise [madvise] never")
	w, state := newWindow(t, dir, map[string]string{Enabled: "always", Defrag: "defer"})
	if _, err := w.Open(t.Context()); err != nil { // never closed: the agent dies
		t.Fatal(err)
	}
	got, err := recoverWith(t.Context(), dir, state, kernelWrite)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{Enabled: "madvise", Defrag: "madvise"}, got); diff != "" {
		t.Errorf("Recover put back (-want +got):\n%s", diff)
	}
	if e, d := current(t, dir, Enabled), current(t, dir, Defrag); e != "madvise" || d != "madvise" {
		t.Errorf("after Recover: enabled=%q defrag=%q, want madvise, madvise", e, d)
	}
	if _, err := os.Stat(filepath.Join(state, stateFile)); !os.IsNotExist(err) {
		t.Errorf("state file after Recover: %v, want none", err)
	}
	// Nothing to do the second time.
	if got, err := recoverWith(t.Context(), dir, state, kernelWrite); err != nil || got != nil {
		t.Errorf("second Recover = %v, %v; want nothing", got, err)
	}
}

func TestRecoverUnusableStateFile(t *testing.T) {
	dir := fakeSysfs(t, "[always] madvise never", "[madvise]")
	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, stateFile), []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := recoverWith(t.Context(), dir, state, kernelWrite); err == nil {
		t.Fatal("Recover accepted a corrupt state file")
	}
	if got := current(t, dir, Enabled); got != "always" {
		t.Errorf("enabled = %q, want it untouched", got)
	}
	if _, err := os.Stat(filepath.Join(state, stateFile)); err != nil {
		t.Errorf("the corrupt state file should stay for a person: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"enabled", Config{Dir: "/d", StateDir: "/s", Values: map[string]string{Enabled: "always"}}, true},
		{"defrag too", Config{Dir: "/d", StateDir: "/s", Values: map[string]string{Enabled: "always", Defrag: "defer"}}, true},
		{"no enabled", Config{Dir: "/d", StateDir: "/s", Values: map[string]string{Defrag: "defer"}}, false},
		{"other setting", Config{Dir: "/d", StateDir: "/s", Values: map[string]string{Enabled: "always", "shmem_enabled": "always"}}, false},
		{"two words", Config{Dir: "/d", StateDir: "/s", Values: map[string]string{Enabled: "always never"}}, false},
		{"no state dir", Config{Dir: "/d", Values: map[string]string{Enabled: "always"}}, false},
	} {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// A close that cannot put the values back keeps them: the next window's close does.
func TestWindowRetriesAFailedClose(t *testing.T) {
	dir := fakeSysfs(t, "always [madvise] never", "[madvise]")
	w, state := newWindow(t, dir, map[string]string{Enabled: "always"})
	c, err := w.Open(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	w.write = func(string, string, string) error { return syscall.EBUSY }
	c()
	if got := current(t, dir, Enabled); got != "always" {
		t.Fatalf("enabled after a failed close = %q, want always (the write failed)", got)
	}
	if _, err := os.Stat(filepath.Join(state, stateFile)); err != nil {
		t.Errorf("the state file must stay after a failed close: %v", err)
	}
	w.write = kernelWrite
	c, err = w.Open(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	c()
	if got := current(t, dir, Enabled); got != "madvise" {
		t.Errorf("enabled after the next window = %q, want madvise", got)
	}
	if _, err := os.Stat(filepath.Join(state, stateFile)); !os.IsNotExist(err) {
		t.Errorf("state file after the retried close: %v, want none", err)
	}
}
