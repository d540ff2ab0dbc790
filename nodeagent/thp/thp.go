// Package thp opens a window of transparent huge pages around the agent's checkpoints.
//
// The CUDA driver checkpoints a process by copying its GPU memory, with one CPU thread inside
// the process, into anonymous memory it maps itself. Under the usual THP setting `madvise` that
// memory comes in 4 KiB pages, one minor fault each (2.3 million for 8 GiB), and the faults
// bound the rate: with THP `always` the same checkpoint runs 1.4-1.5x faster and the restore
// 1.2-1.35x (H200, driver 580). The driver's mappings do not come through libc, so neither
// glibc's hugetlb tunable nor an madvise from an interposer reaches them; only the node-wide
// setting does.
//
// A Window sets /sys/kernel/mm/transparent_hugepage/enabled (and optionally defrag) to the
// window's values while at least one checkpoint runs and puts the previous values back when
// the last one ends: concurrent moves share one window. Pages keep their size after the
// window closes, so the restore of memory parked during the window gains too. The previous
// values are written to a state file before the first change, so that an agent that dies with
// the window open puts them back when it starts again (Recover).
//
// The trade-off: while the window is open, every process on the node that maps anonymous
// memory gets huge pages as if the node ran `always` (more memory per sparse mapping, page
// clearing of 2 MiB at a time). Outside the windows the node runs as configured.
package thp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// DefaultDir is where the kernel exposes the THP settings.
const DefaultDir = "/sys/kernel/mm/transparent_hugepage"

// Setting files in the THP folder.
const (
	Enabled = "enabled"
	Defrag  = "defrag"
)

// stateFile is the name of the file in the state folder that holds the values to put back.
const stateFile = "thp-window.json"

// Config is what a Window changes and where.
type Config struct {
	// Dir is the THP folder of sysfs (DefaultDir); tests give a folder of plain files.
	Dir string
	// StateDir holds the state file with the values to put back (created when missing).
	StateDir string
	// Values are the settings the window writes, e.g. {"enabled": "always"}; "enabled" is
	// required.
	Values map[string]string
}

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.Dir == "" || c.StateDir == "" {
		errs = append(errs, errors.New("the thp folder and the state folder are required"))
	}
	if c.Values[Enabled] == "" {
		errs = append(errs, errors.New("the window needs a value of enabled"))
	}
	for k, v := range c.Values {
		if k != Enabled && k != Defrag {
			errs = append(errs, fmt.Errorf("setting %q: want enabled or defrag", k))
		}
		if v == "" || strings.ContainsAny(v, " \n[]/") {
			errs = append(errs, fmt.Errorf("setting %s=%q: want one word", k, v))
		}
	}
	return errors.Join(errs...)
}

// Window is the THP window of one node. Its zero value is not usable; use New.
type Window struct {
	cfg   Config
	clock clock.PassiveClock
	// write sets a setting (writeSysfs; tests emulate the kernel's format).
	write func(dir, name, value string) error

	mu      sync.Mutex
	holders int
	// saved are the values to put back when the window closes: only the settings the window
	// changed (empty when the node already had the window's values).
	saved  map[string]string
	opened time.Time
}

// New returns a closed Window.
func New(cfg Config, clk clock.PassiveClock) (*Window, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Window{cfg: cfg, clock: clk, write: writeSysfs}, nil
}

// Current reads a setting: the word in brackets of "always [madvise] never", or the only word of
// a file that holds nothing else.
func Current(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return "", fmt.Errorf("reading thp setting %s: %w", name, err)
	}
	s := string(b)
	if f := strings.Fields(s); len(f) == 1 && !strings.ContainsAny(s, "[]") {
		return f[0], nil // a plain file standing in for sysfs (dry runs) holds the value alone
	}
	i, j := strings.IndexByte(s, '['), strings.IndexByte(s, ']')
	if i < 0 || j < i+2 {
		return "", fmt.Errorf("thp setting %s: no value in brackets in %q", name, strings.TrimSpace(s))
	}
	return s[i+1 : j], nil
}

func writeSysfs(dir, name, value string) error {
	// sysfs takes the value in one write of the existing file.
	if err := os.WriteFile(filepath.Join(dir, name), []byte(value), 0o644); err != nil {
		return fmt.Errorf("writing thp setting %s=%s: %w", name, value, err)
	}
	return nil
}

// Open opens the window, or joins it when a checkpoint holds it open already. The caller
// must call the returned close exactly once, when its checkpoint ended. An error leaves the
// settings as they were (what was changed is put back); the caller goes on without huge
// pages.
func (w *Window) Open(ctx context.Context) (closeFn func(), err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.holders == 0 {
		if err := w.open(ctx); err != nil {
			windowErrors.WithLabelValues("open").Inc()
			return nil, err
		}
	}
	w.holders++
	windowHolders.Set(float64(w.holders))
	var once sync.Once
	return func() { once.Do(func() { w.release(ctx) }) }, nil
}

// open changes the settings; w.mu is held.
func (w *Window) open(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	if len(w.saved) > 0 {
		// The last close could not put the values back: they are still the ones to restore
		// (and in the state file); this window's close tries again.
		w.opened = w.clock.Now()
		windowOpens.WithLabelValues("changed").Inc()
		return nil
	}
	saved := map[string]string{}
	for _, name := range w.settings() {
		cur, err := Current(w.cfg.Dir, name)
		if err != nil {
			return err
		}
		if cur != w.cfg.Values[name] {
			saved[name] = cur
		}
	}
	w.opened = w.clock.Now()
	if len(saved) == 0 {
		w.saved = saved
		windowOpens.WithLabelValues("unchanged").Inc()
		logger.V(4).Info("THP window: the node has the window's settings already", "values", w.cfg.Values)
		return nil
	}
	// The state file first: an agent that dies after the write below puts the values back.
	if err := w.saveState(saved); err != nil {
		return err
	}
	var changed []string
	for _, name := range w.settings() {
		if _, ok := saved[name]; !ok {
			continue
		}
		if err := w.write(w.cfg.Dir, name, w.cfg.Values[name]); err != nil {
			rbErr := w.restore(ctx, pick(saved, changed))
			if rbErr == nil {
				rbErr = w.removeState()
			}
			return errors.Join(err, rbErr)
		}
		changed = append(changed, name)
	}
	w.saved = saved
	windowOpen.Set(1)
	windowOpens.WithLabelValues("changed").Inc()
	logger.V(2).Info("THP window opened", "values", w.cfg.Values, "previous", saved)
	return nil
}

// release leaves the window; the last holder closes it.
func (w *Window) release(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.holders--
	windowHolders.Set(float64(w.holders))
	if w.holders > 0 {
		return
	}
	d := w.clock.Since(w.opened)
	windowSeconds.Add(d.Seconds())
	if len(w.saved) == 0 {
		return
	}
	logger := klog.FromContext(ctx)
	if err := w.restore(ctx, w.saved); err != nil {
		// The state file stays: the next start (or the next window's close) tries again.
		windowErrors.WithLabelValues("close").Inc()
		logger.Error(err, "THP window: putting the previous settings back failed; the state file keeps them for the next start", "previous", w.saved)
		return
	}
	if err := w.removeState(); err != nil {
		windowErrors.WithLabelValues("close").Inc()
		logger.Error(err, "THP window: removing the state file failed")
	}
	windowOpen.Set(0)
	logger.V(2).Info("THP window closed", "restored", w.saved, "open", d)
	w.saved = nil
}

// restore writes values back, each only where the setting still has the window's value:
// someone who changed it meanwhile meant it.
func (w *Window) restore(ctx context.Context, values map[string]string) error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(values)) {
		cur, err := Current(w.cfg.Dir, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if cur != w.cfg.Values[name] {
			klog.FromContext(ctx).Info("THP window: the setting was changed while the window was open; leaving it", "setting", name, "value", cur, "previous", values[name])
			continue
		}
		errs = append(errs, w.write(w.cfg.Dir, name, values[name]))
	}
	return errors.Join(errs...)
}

// settings are the names the window writes, enabled first.
func (w *Window) settings() []string {
	out := []string{Enabled}
	if _, ok := w.cfg.Values[Defrag]; ok {
		out = append(out, Defrag)
	}
	return out
}

// state is the state file: the values to put back and the window's own.
type state struct {
	Previous map[string]string `json:"previous"`
	Window   map[string]string `json:"window"`
}

func (w *Window) statePath() string { return filepath.Join(w.cfg.StateDir, stateFile) }

func (w *Window) saveState(saved map[string]string) error {
	if err := os.MkdirAll(w.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("creating the state folder: %w", err)
	}
	b, err := json.Marshal(state{Previous: saved, Window: w.cfg.Values})
	if err != nil {
		return err
	}
	tmp := w.statePath() + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("writing the thp state file: %w", err)
	}
	_, err = f.Write(b)
	err = errors.Join(err, f.Sync(), f.Close())
	if err == nil {
		err = os.Rename(tmp, w.statePath())
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("writing the thp state file: %w", err)
	}
	return nil
}

func (w *Window) removeState() error {
	if err := os.Remove(w.statePath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the thp state file: %w", err)
	}
	return nil
}

// Recover puts back the settings an earlier agent left changed (its state file) and removes
// the file. Call it at start, before any checkpoint. It reports what it put back; nothing
// without a state file. A setting someone changed since (not the window's value) is left.
func Recover(ctx context.Context, dir, stateDir string) (map[string]string, error) {
	return recoverWith(ctx, dir, stateDir, writeSysfs)
}

func recoverWith(ctx context.Context, dir, stateDir string, write func(dir, name, value string) error) (map[string]string, error) {
	path := filepath.Join(stateDir, stateFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the thp state file: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil || len(st.Previous) == 0 {
		// Nothing usable: the file cannot tell what to put back. Keep it for a person.
		return nil, fmt.Errorf("thp state file %s is not usable (%q): put the settings of %s back by hand and delete it", path, strings.TrimSpace(string(b)), dir)
	}
	w := &Window{cfg: Config{Dir: dir, StateDir: stateDir, Values: st.Window}, write: write}
	for name := range st.Previous {
		if name != Enabled && name != Defrag {
			return nil, fmt.Errorf("thp state file %s names setting %q", path, name)
		}
	}
	if err := w.restore(ctx, st.Previous); err != nil {
		return nil, err
	}
	if err := w.removeState(); err != nil {
		return nil, err
	}
	recoveries.Inc()
	klog.FromContext(ctx).Info("THP window: put back the settings an earlier agent left changed", "restored", st.Previous)
	return st.Previous, nil
}

func pick(m map[string]string, keys []string) map[string]string {
	out := map[string]string{}
	for _, k := range keys {
		out[k] = m[k]
	}
	return out
}
