// Package tiers tests the node agent's storage tiers on a real control plane (etcd,
// kube-apiserver, kwok nodes) with a real S3-compatible object store (SeaweedFS, built from
// the Go module proxy and started by the project's hack/ scripts). The GPUs, their processes
// and the checkpoint images are the agent's simulated ones (--simulate: mock NVML, a fake CUDA
// driver, images that hold a record of the simulated process, not GPU memory); the image
// store, its encryption and verification, the disk tier and the object store are real.
//
// A suspended pod is spilled from host memory to disk when a second suspension passes the
// high-water mark, moved to the object store once idle, and resumed from there with its
// progress counter where it stopped; a tampered object is refused naming the file and the pod
// stays suspended with nothing deleted; with the object store down the image stays on disk
// and the pod resumes from there; the images of a pod deleted while the agent was down are
// swept from disk and the object store by the next agent, those of pods that exist are kept;
// above the disk tier's high-water mark (on the real filesystem) an image moves to the object
// store at once, and without an object store the agent reports it and keeps the image.
package tiers

import (
	"os"
	"testing"

	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/objectstore"
)

const (
	nodes       = 5
	gpusPerNode = 2
)

var (
	server     *objectstore.Server
	skipReason string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	return objectstore.Main(func(s *objectstore.Server, skip string) int {
		server, skipReason = s, skip
		return framework.RunWithGPUNodes(m, nodes, gpusPerNode)
	})
}
