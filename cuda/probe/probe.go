// Package probe is the logic of the cuda-test tool: it drives the CUDA driver
// through cuda.Interface to inventory GPUs, hold a checksummed GPU buffer in
// a process, suspend and resume processes with the checkpoint API, and
// measure host<->device copy rates. Every result is printed as key=value
// lines (or JSON lines with --json) with timings, for scripts on GPU
// machines (test/gpu) to parse.
package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/kybernate/kybernate/cuda"
)

// Exit codes of Main.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// Env is what Main needs from its process.
type Env struct {
	Stdout io.Writer
	Stderr io.Writer
	// Open returns the driver, normally cuda.New.
	Open func() (cuda.Interface, error)
	// Verify, if not nil, asks a running hold to verify its buffer now
	// (cuda-test wires SIGUSR1 to it).
	Verify <-chan os.Signal
}

type command struct {
	name  string
	usage string
	run   func(ctx context.Context, c *cli, args []string) error
}

var commands = []command{
	{"info", "driver version, checkpoint capability and GPUs", runInfo},
	{"hold", "allocate and fill GPU memory, verify it periodically and on SIGUSR1", runHold},
	{"state", "checkpoint state of a process", runState},
	{"lock", "lock a process (cuCheckpointProcessLock)", runLock},
	{"unlock", "unlock a process (cuCheckpointProcessUnlock)", runUnlock},
	{"suspend", "lock and checkpoint a process: its GPU memory moves to its host memory", runSuspend},
	{"resume", "restore (optionally onto another GPU) and unlock a process", runResume},
	{"memcpy-bench", "pinned and pageable host<->device copy rates", runMemcpyBench},
}

// cli is the state of one Main call.
type cli struct {
	env Env
	out *reporter
	lib cuda.Interface
}

// errUsage marks errors that are the caller's: exit code 2.
var errUsage = errors.New("usage")

// Main runs the cuda-test command line args (without the program name) and
// returns the exit code.
func Main(ctx context.Context, args []string, env Env) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(env.Stderr)
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	var cmd *command
	for i := range commands {
		if commands[i].name == args[0] {
			cmd = &commands[i]
		}
	}
	if cmd == nil {
		fmt.Fprintf(env.Stderr, "cuda-test: unknown command %q\n", args[0])
		printUsage(env.Stderr)
		return ExitUsage
	}
	c := &cli{env: env, out: &reporter{w: env.Stdout}}
	err := cmd.run(ctx, c, args[1:])
	if c.lib != nil {
		c.lib.Close()
	}
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, pflag.ErrHelp):
		return ExitOK
	case errors.Is(err, errUsage):
		fmt.Fprintf(env.Stderr, "cuda-test %s: %v\n", cmd.name, err)
		return ExitUsage
	}
	fmt.Fprintf(env.Stderr, "cuda-test %s: %v\n", cmd.name, err)
	return ExitError
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: cuda-test <command> [flags]   (cuda-test <command> --help for flags)")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-13s %s\n", c.name, c.usage)
	}
}

// flags returns a flag set for command name with the common --json flag.
func (c *cli) flags(name string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("cuda-test "+name, pflag.ContinueOnError)
	fs.SetOutput(c.env.Stderr)
	fs.BoolVar(&c.out.json, "json", false, "print JSON lines instead of key=value lines")
	return fs
}

func (c *cli) parse(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	return nil
}

// open loads the driver and calls cuInit, which every command needs
// (restoring a process needs it in the caller).
func (c *cli) open() error {
	lib, err := c.env.Open()
	if err != nil {
		return err
	}
	c.lib = lib
	if err := lib.Init(); err != nil {
		return fmt.Errorf("initialise driver: %w", err)
	}
	return nil
}

// errorFields returns key/values describing err for a record: the message,
// and the CUresult if there is one.
func errorFields(err error) []any {
	kv := []any{"error", err}
	var cerr *cuda.Error
	if errors.As(err, &cerr) {
		kv = append(kv, "code", int(cerr.Code), "code_name", cerr.Name)
	}
	kv = append(kv, "timeout", errors.Is(err, cuda.ErrTimeout),
		"not_supported", errors.Is(err, cuda.ErrNotSupported))
	return kv
}

// gpu is a resolved --gpu.
type gpu struct {
	dev  cuda.Device
	uuid cuda.UUID
}

// visibleGPUs returns the UUIDs of all GPUs this process sees, by ordinal.
func (c *cli) visibleGPUs() ([]cuda.UUID, error) {
	n, err := c.lib.DeviceGetCount()
	if err != nil {
		return nil, fmt.Errorf("count gpus: %w", err)
	}
	out := make([]cuda.UUID, 0, n)
	for i := range n {
		dev, err := c.lib.DeviceGet(i)
		if err != nil {
			return nil, fmt.Errorf("get gpu %d: %w", i, err)
		}
		u, err := c.lib.DeviceGetUUID(dev)
		if err != nil {
			return nil, fmt.Errorf("get uuid of gpu %d: %w", i, err)
		}
		out = append(out, u)
	}
	return out, nil
}

// resolveGPU finds a GPU by ordinal ("0") or UUID ("GPU-...").
func (c *cli) resolveGPU(s string) (gpu, error) {
	all, err := c.visibleGPUs()
	if err != nil {
		return gpu{}, err
	}
	if strings.HasPrefix(s, "GPU-") {
		u, err := cuda.ParseUUID(s)
		if err != nil {
			return gpu{}, fmt.Errorf("%w: --gpu: %w", errUsage, err)
		}
		for i, v := range all {
			if v == u {
				return gpu{dev: cuda.Device(i), uuid: u}, nil
			}
		}
		return gpu{}, fmt.Errorf("gpu %s is not among the %d visible gpus", u, len(all))
	}
	i, err := strconv.Atoi(s)
	if err != nil {
		return gpu{}, fmt.Errorf("%w: --gpu %q: want an index or a GPU-... uuid", errUsage, s)
	}
	if i < 0 || i >= len(all) {
		return gpu{}, fmt.Errorf("gpu %d is not among the %d visible gpus", i, len(all))
	}
	return gpu{dev: cuda.Device(i), uuid: all[i]}, nil
}

func runInfo(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("info")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	lib, err := c.env.Open()
	if err != nil {
		return err
	}
	c.lib = lib
	v, err := lib.DriverGetVersion()
	if err != nil {
		return fmt.Errorf("driver version: %w", err)
	}
	capab := cuda.CapabilityOf(v)
	c.out.emit("event", "driver", "version", v, "cuda", cuda.FormatVersion(v),
		"checkpoint", capab.Checkpoint, "remap", capab.Remap)
	if err := lib.Init(); err != nil {
		return fmt.Errorf("initialise driver: %w", err)
	}
	all, err := c.visibleGPUs()
	if err != nil {
		return err
	}
	for i, u := range all {
		name, err := lib.DeviceGetName(cuda.Device(i))
		if err != nil {
			return fmt.Errorf("name of gpu %d: %w", i, err)
		}
		mem, err := lib.DeviceTotalMem(cuda.Device(i))
		if err != nil {
			return fmt.Errorf("memory of gpu %d: %w", i, err)
		}
		c.out.emit("event", "device", "index", i, "uuid", u, "name", name, "total_bytes", mem)
	}
	c.out.emit("event", "info", "devices", len(all))
	return nil
}
