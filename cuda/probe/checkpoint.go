package probe

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/kybernate/kybernate/cuda"
)

func pidFlag(fs *pflag.FlagSet) *int {
	return fs.Int("pid", 0, "process id, as seen from this (the host's) pid namespace")
}

// preparePID parses a subcommand's flags, requires --pid and opens the driver: what every
// subcommand that drives another process does first.
func (c *cli) preparePID(fs *pflag.FlagSet, args []string, pid *int) error {
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if err := needPID(*pid); err != nil {
		return err
	}
	return c.open()
}

func needPID(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("%w: --pid is required", errUsage)
	}
	return nil
}

func runState(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("state")
	pid := pidFlag(fs)
	if err := c.preparePID(fs, args, pid); err != nil {
		return err
	}
	st, err := c.lib.CheckpointProcessGetState(*pid)
	if err != nil {
		c.out.emit(append([]any{"event", "state", "pid", *pid, "ok", false}, errorFields(err)...)...)
		return fmt.Errorf("state of pid %d: %w", *pid, err)
	}
	kv := []any{"event", "state", "pid", *pid, "ok", true, "state", st}
	if tid, err := c.lib.CheckpointProcessGetRestoreThreadID(*pid); err == nil {
		kv = append(kv, "restore_tid", tid)
	} else {
		kv = append(kv, "restore_tid_error", err)
	}
	c.out.emit(kv...)
	return nil
}

// step runs one timed checkpoint call and reports it as event name.
func (c *cli) step(name string, pid int, bytes uint64, call func() error, extra ...any) (time.Duration, error) {
	start := time.Now()
	err := call()
	d := time.Since(start)
	kv := []any{"event", name, "pid", pid, "ok", err == nil, "ms", d}
	if bytes > 0 && err == nil {
		kv = append(kv, "bytes", bytes, "gbps", gbps(bytes, d))
	}
	kv = append(kv, extra...)
	if err != nil {
		kv = append(kv, errorFields(err)...)
	}
	c.out.emit(kv...)
	return d, err
}

func runLock(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("lock")
	pid := pidFlag(fs)
	timeout := fs.Duration("timeout", 10*time.Second, "how long the driver may wait for the process's submitted work; 0 waits without limit")
	if err := c.preparePID(fs, args, pid); err != nil {
		return err
	}
	_, err := c.step("lock", *pid, 0, func() error { return c.lib.CheckpointProcessLock(*pid, *timeout) },
		"timeout_ms", *timeout)
	if err != nil {
		return fmt.Errorf("lock pid %d: %w", *pid, err)
	}
	return nil
}

func runUnlock(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("unlock")
	pid := pidFlag(fs)
	if err := c.preparePID(fs, args, pid); err != nil {
		return err
	}
	if _, err := c.step("unlock", *pid, 0, func() error { return c.lib.CheckpointProcessUnlock(*pid) }); err != nil {
		return fmt.Errorf("unlock pid %d: %w", *pid, err)
	}
	return nil
}

func runSuspend(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("suspend")
	pid := pidFlag(fs)
	timeout := fs.Duration("lock-timeout", 10*time.Second, "how long the lock may wait for the process's submitted work; 0 waits without limit")
	bytes := fs.Uint64("bytes", 0, "GPU memory of the process, to report GB/s")
	rollback := fs.Bool("rollback", true, "unlock the process again if the checkpoint fails")
	if err := c.preparePID(fs, args, pid); err != nil {
		return err
	}
	start := time.Now()
	lockTime, err := c.step("lock", *pid, 0, func() error { return c.lib.CheckpointProcessLock(*pid, *timeout) },
		"timeout_ms", *timeout)
	if err != nil {
		c.out.emit("event", "suspend", "pid", *pid, "ok", false, "failed_step", "lock")
		return fmt.Errorf("suspend pid %d: lock: %w", *pid, err)
	}
	ckptTime, err := c.step("checkpoint", *pid, *bytes, func() error { return c.lib.CheckpointProcessCheckpoint(*pid) })
	if err != nil {
		if *rollback {
			c.step("unlock", *pid, 0, func() error { return c.lib.CheckpointProcessUnlock(*pid) }, "rollback", true)
		}
		c.out.emit("event", "suspend", "pid", *pid, "ok", false, "failed_step", "checkpoint")
		return fmt.Errorf("suspend pid %d: checkpoint: %w", *pid, err)
	}
	total := time.Since(start)
	kv := []any{"event", "suspend", "pid", *pid, "ok", true, "lock_ms", lockTime, "checkpoint_ms", ckptTime, "total_ms", total}
	if *bytes > 0 {
		kv = append(kv, "bytes", *bytes, "gbps", gbps(*bytes, total))
	}
	if st, err := c.lib.CheckpointProcessGetState(*pid); err == nil {
		kv = append(kv, "state", st)
	}
	c.out.emit(kv...)
	return nil
}

// pairsString renders pairs as OLD>NEW,... for records.
func pairsString(pairs []cuda.GPUPair) string {
	var parts []string
	for _, p := range pairs {
		parts = append(parts, p.Old.String()+">"+p.New.String())
	}
	return strings.Join(parts, ",")
}

func runResume(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("resume")
	pid := pidFlag(fs)
	from := fs.String("from", "", "GPU the process's memory was on (index or GPU-... uuid, as this process sees it); needed with --to")
	to := fs.String("to", "", "GPU to restore onto (index or uuid); default: where it was")
	rawPairs := fs.StringArray("pair", nil, "explicit GPU pair OLD=NEW (uuids), repeatable; bypasses --from/--to, for driver experiments")
	bytes := fs.Uint64("bytes", 0, "GPU memory of the process, to report GB/s")
	unlock := fs.Bool("unlock", true, "unlock after the restore (the process runs on)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if err := needPID(*pid); err != nil {
		return err
	}
	if (*to == "") != (*from == "") {
		return fmt.Errorf("%w: --from and --to go together", errUsage)
	}
	if *to != "" && len(*rawPairs) > 0 {
		return fmt.Errorf("%w: --pair excludes --from and --to", errUsage)
	}
	var pairs []cuda.GPUPair
	for _, s := range *rawPairs {
		o, n, ok := strings.Cut(s, "=")
		if !ok {
			return fmt.Errorf("%w: --pair %q: want OLD=NEW", errUsage, s)
		}
		old, err := cuda.ParseUUID(o)
		if err != nil {
			return fmt.Errorf("%w: --pair: %w", errUsage, err)
		}
		nw, err := cuda.ParseUUID(n)
		if err != nil {
			return fmt.Errorf("%w: --pair: %w", errUsage, err)
		}
		pairs = append(pairs, cuda.GPUPair{Old: old, New: nw})
	}
	if err := c.open(); err != nil {
		return err
	}
	if *to != "" {
		src, err := c.resolveGPU(*from)
		if err != nil {
			return err
		}
		dst, err := c.resolveGPU(*to)
		if err != nil {
			return err
		}
		all, err := c.visibleGPUs()
		if err != nil {
			return err
		}
		pairs, err = cuda.RemapPairs(all, map[cuda.UUID]cuda.UUID{src.uuid: dst.uuid})
		if err != nil {
			return err
		}
		c.out.emit("event", "pairs", "pid", *pid, "from", src.uuid, "to", dst.uuid, "visible", len(all),
			"pairs", pairsString(pairs))
	} else if len(pairs) > 0 {
		c.out.emit("event", "pairs", "pid", *pid, "explicit", true, "pairs", pairsString(pairs))
	}

	start := time.Now()
	restoreTime, err := c.step("restore", *pid, *bytes, func() error { return c.lib.CheckpointProcessRestore(*pid, pairs) },
		"pairs", len(pairs))
	if err != nil {
		kv := []any{"event", "resume", "pid", *pid, "ok", false, "failed_step", "restore"}
		if st, err := c.lib.CheckpointProcessGetState(*pid); err == nil {
			kv = append(kv, "state", st)
		}
		c.out.emit(kv...)
		return fmt.Errorf("resume pid %d: restore: %w", *pid, err)
	}
	var unlockTime time.Duration
	if *unlock {
		unlockTime, err = c.step("unlock", *pid, 0, func() error { return c.lib.CheckpointProcessUnlock(*pid) })
		if err != nil {
			c.out.emit("event", "resume", "pid", *pid, "ok", false, "failed_step", "unlock")
			return fmt.Errorf("resume pid %d: unlock: %w", *pid, err)
		}
	}
	total := time.Since(start)
	kv := []any{"event", "resume", "pid", *pid, "ok", true, "restore_ms", restoreTime, "unlock_ms", unlockTime, "total_ms", total}
	if *bytes > 0 {
		kv = append(kv, "bytes", *bytes, "gbps", gbps(*bytes, total))
	}
	if st, err := c.lib.CheckpointProcessGetState(*pid); err == nil {
		kv = append(kv, "state", st)
	}
	c.out.emit(kv...)
	return nil
}
