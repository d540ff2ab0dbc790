// Command cuda-test probes the CUDA driver's checkpoint API on a GPU machine:
// inventory, a checksummed GPU-memory holder, suspend/resume of any CUDA
// process by pid, and copy-rate benchmarks. See package probe.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/cuda/probe"
)

func main() {
	os.Exit(run())
}

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	verify := make(chan os.Signal, 1)
	signal.Notify(verify, syscall.SIGUSR1)
	return probe.Main(ctx, os.Args[1:], probe.Env{
		Stdout: os.Stdout,
		Stderr: os.Stderr,
		Open:   func() (cuda.Interface, error) { return cuda.New() },
		Verify: verify,
	})
}
