// Command containerd-shim-kybernate-v1 is Kybernate's containerd shim, runtime
// io.containerd.kybernate.v1: runc v2's shim with the task service of package shim.
package main

import (
	"context"

	"github.com/containerd/containerd/runtime/v2/runc/manager"
	_ "github.com/containerd/containerd/runtime/v2/runc/pause"
	"github.com/containerd/containerd/runtime/v2/shim"

	kshim "github.com/kybernate/kybernate/shim"
)

func main() {
	shim.RunManager(context.Background(), manager.NewShimManager(kshim.RuntimeName))
}
