// Command agent serves the node agent's gRPC API (package server) for the e2e tests, with
// container checkpoints on the tests' private containerd and neither Kubernetes nor GPUs. It
// runs as a process of its own because the tests drive containerd through its Go client, which
// links Go's plugin package; a binary that does binds every symbol at load time, and NVML's
// (linked through package server) then fail to load.
//
// With --disk-tier-dir it moves containers' images between the storage tiers as the agent does
// on a real node (package tier, Containers), with one image key for every namespace from
// --image-key-file (the agent reads it from each namespace's Secret) and, with
// --object-store-env, the object store hack/seaweedfs-up.sh describes in its s3.env.
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
	"github.com/kybernate/kybernate/nodeagent/storage"
	"github.com/kybernate/kybernate/nodeagent/tier"
	"github.com/kybernate/kybernate/test/objectstore"
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
	diskDir := flag.String("disk-tier-dir", "", "storage tiers: folder of the disk tier (empty: no tiers)")
	keyFile := flag.String("image-key-file", "", "storage tiers: the image key of every namespace (32 bytes, raw, base64 or hex)")
	objectEnv := flag.String("object-store-env", "", "storage tiers: s3.env of hack/seaweedfs-up.sh (empty: no object store)")
	flag.Parse()
	runtime, err := checkpoint.NewContainerd(*containerd, *namespace)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer runtime.Close()
	cp := checkpoint.New(checkpoint.Config{Node: "e2e", Timeout: *timeout}, runtime, nil, nil, clock.RealClock{})
	node := server.Node{Checkpoints: cp}
	if *diskDir != "" {
		if node.Tiers, err = tiers(cp, *diskDir, *keyFile, *objectEnv, *images); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	srv := server.New(server.NodeMap{"e2e": node}, nil, nil, 0, false)
	srv.SetImageRoot(*images)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := server.Serve(ctx, *socket, srv); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// tiers are the storage tiers of the node's containers.
func tiers(cp *checkpoint.Checkpointer, diskDir, keyFile, objectEnv, images string) (*tier.Containers, error) {
	data, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("--image-key-file: %w", err)
	}
	key, err := storage.ParseKey(data)
	if err != nil {
		return nil, fmt.Errorf("--image-key-file: %w", err)
	}
	if err := os.MkdirAll(tier.DiskTierRoot(diskDir), 0o700); err != nil {
		return nil, err
	}
	disk, err := storage.NewDisk(tier.DiskTierRoot(diskDir))
	if err != nil {
		return nil, err
	}
	c := &tier.Containers{Checkpointer: cp, Disk: disk, Keys: oneKey{key}, DiskDir: diskDir, ImageRoot: images, Timeout: 5 * time.Minute}
	if objectEnv != "" {
		cfg, err := objectstore.ReadConfig(objectEnv)
		if err != nil {
			return nil, fmt.Errorf("--object-store-env: %w", err)
		}
		s3, err := storage.NewS3(cfg)
		if err != nil {
			return nil, fmt.Errorf("--object-store-env: %w", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s3.EnsureBucket(ctx); err != nil {
			return nil, fmt.Errorf("--object-store-env: %w", err)
		}
		c.Objects = s3
	}
	return c, nil
}

// oneKey is the same image key for every namespace.
type oneKey struct{ key storage.Key }

func (k oneKey) Key(context.Context, string) (storage.Key, error) { return k.key, nil }
