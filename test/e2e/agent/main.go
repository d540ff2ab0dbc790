// Command agent serves the node agent's gRPC API (package server) for the e2e tests, with
// container checkpoints on the tests' private containerd and neither Kubernetes nor GPUs. It
// runs as a process of its own because the tests drive containerd through its Go client, which
// links Go's plugin package; a binary that does binds every symbol at load time, and NVML's
// (linked through package server) then fail to load.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/utils/clock"

	"github.com/kybernate/kybernate/nodeagent/checkpoint"
	"github.com/kybernate/kybernate/nodeagent/server"
)

func main() {
	os.Exit(run())
}

func run() int {
	containerd := flag.String("containerd-socket", "", "containerd's socket")
	namespace := flag.String("namespace", "", "containerd namespace of the containers")
	socket := flag.String("socket", "", "where to serve the agent API")
	timeout := flag.Duration("dump-timeout", 2*time.Minute, "limit of a CRIU dump")
	images := flag.String("checkpoint-dir", "", "checkpoint folder images are restored from")
	flag.Parse()
	runtime, err := checkpoint.NewContainerd(*containerd, *namespace)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer runtime.Close()
	cp := checkpoint.New(checkpoint.Config{Node: "e2e", Timeout: *timeout}, runtime, nil, nil, clock.RealClock{})
	srv := server.New(server.NodeMap{"e2e": {Checkpoints: cp}}, nil, nil, 0, false)
	srv.SetImageRoot(*images)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := server.Serve(ctx, *socket, srv); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
