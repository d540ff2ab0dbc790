package app

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/kybernate/kybernate/nodeagent/checkpoint"
	"github.com/kybernate/kybernate/nodeagent/storage"
	"github.com/kybernate/kybernate/nodeagent/tier"
)

// tierNodes are the served nodes the tier policy works on.
type tierNodes struct {
	mu sync.RWMutex
	m  map[string]tier.Node
}

var _ tier.Nodes = (*tierNodes)(nil)

func (t *tierNodes) TierNode(name string) (tier.Node, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	n, ok := t.m[name]
	return n, ok
}

func (t *tierNodes) Names() []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]string, 0, len(t.m))
	for name := range t.m {
		out = append(out, name)
	}
	return out
}

// set sets node's tier node; a nil Engine removes it.
func (t *tierNodes) set(name string, n tier.Node) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n.Engine == nil && n.Containers == nil {
		delete(t.m, name)
		return
	}
	t.m[name] = n
}

// objectStoreTimeout bounds reading the object store's Secret and checking its bucket at start.
const objectStoreTimeout = 30 * time.Second

// newTiers builds the tier policy from the flags: the disk tier under --disk-tier-dir and, with
// --object-store-secret, the object store the Secret describes. An object store that cannot be
// reached at start is not fatal: uploads fail, keep their images on disk and are retried.
func (a *agent) newTiers(ctx context.Context) (*tier.Manager, error) {
	o := a.o
	if err := os.MkdirAll(tier.DiskTierRoot(o.Tiers.DiskDir), 0o700); err != nil {
		return nil, fmt.Errorf("--disk-tier-dir: %w", err)
	}
	disk, err := storage.NewDisk(tier.DiskTierRoot(o.Tiers.DiskDir))
	if err != nil {
		return nil, fmt.Errorf("--disk-tier-dir: %w", err)
	}
	var objects storage.Tier
	if o.ObjectStoreSecret != "" {
		s3, err := a.objectStore(ctx)
		if err != nil {
			return nil, err
		}
		objects = s3
	}
	if o.Tiers.DiskHighWater.IsSet() && objects == nil {
		klog.FromContext(ctx).Info("--disk-tier-high-water without --object-store-secret: above the mark images cannot move; the agent reports it (Event DiskTierHighWater, metric) and deletes nothing",
			"diskTierHighWater", o.Tiers.DiskHighWater.String())
	}
	return a.newPolicy(ctx, disk, objects)
}

// newPolicy is the tier policy over the disk tier and object store, with the watches it needs.
func (a *agent) newPolicy(ctx context.Context, disk, objects storage.Tier) (*tier.Manager, error) {
	o := a.o
	pods := a.podFactory.Core().V1().Pods()
	m := tier.New(o.Tiers, a.tierNodes, disk, objects, tier.SecretKeys{Client: a.kube, Name: o.Tiers.KeySecret}, a.kube, a.kyb,
		pods.Lister(), a.ckptFactory.Kybernate().V1alpha1().GPUCheckpoints().Lister(), a.recorder, clock.RealClock{})
	// A pod put to sleep on disk is spilled as soon as its suspension succeeded.
	if err := watch(a.ckptFactory.Kybernate().V1alpha1().GPUCheckpoints().Informer(), m.CheckpointHandler()); err != nil {
		return nil, err
	}
	// A deleted pod's images are not needed by anyone.
	if err := watch(pods.Informer(), cache.ResourceEventHandlerFuncs{DeleteFunc: func(obj interface{}) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if pod, ok := obj.(*v1.Pod); ok {
			m.Forget(ctx, pod)
		}
	}}); err != nil {
		return nil, err
	}
	return m, nil
}

// containerTiers are a real node's storage tiers without the policy: the disk tier under
// --disk-tier-dir and, with --object-store-secret, the object store, for the agent's Spill and
// the shim's FetchSpilled and ReleaseSpilled.
func (a *agent) containerTiers(ctx context.Context, cp *checkpoint.Checkpointer) (*tier.Containers, error) {
	o := a.o
	if err := os.MkdirAll(tier.DiskTierRoot(o.Tiers.DiskDir), 0o700); err != nil {
		return nil, fmt.Errorf("--disk-tier-dir: %w", err)
	}
	disk, err := storage.NewDisk(tier.DiskTierRoot(o.Tiers.DiskDir))
	if err != nil {
		return nil, fmt.Errorf("--disk-tier-dir: %w", err)
	}
	keys := tier.SecretKeys{Client: a.kube, Name: o.Tiers.KeySecret}
	c := &tier.Containers{Checkpointer: cp, Disk: disk, Keys: keys, DiskDir: o.Tiers.DiskDir, ImageRoot: o.CheckpointDir, Timeout: o.Tiers.MoveTimeout}
	if o.ObjectStoreSecret != "" {
		s3, err := a.objectStore(ctx)
		if err != nil {
			return nil, err
		}
		c.Objects = s3
	}
	if o.Tiers.Enabled() {
		// The policy, the same as on simulated nodes: it spills suspended pods' containers
		// and holds their creates until the pods' Resume (the Gate of FetchSpilled).
		m, err := a.newPolicy(ctx, disk, c.Objects)
		if err != nil {
			return nil, err
		}
		c.Gate = m
		a.tiers = m
		a.controllerOperator().SetTiers(m)
		klog.FromContext(ctx).Info("Storage tiers for containers on, with the tier policy", "diskTierDir", o.Tiers.DiskDir, "highWater", o.Tiers.HighWater.String(),
			"objectStore", o.ObjectStoreSecret != "", "checkpointDir", o.CheckpointDir, "spilledCreateHold", o.Tiers.CreateHold)
		return c, nil
	}
	// The images of pods deleted while spilled are swept as on simulated nodes: a Manager
	// whose node list stays empty runs no policy, only the sweep.
	a.sweeper = tier.New(o.Tiers, a.tierNodes, disk, c.Objects, keys, a.kube, a.kyb, a.podFactory.Core().V1().Pods().Lister(),
		a.ckptFactory.Kybernate().V1alpha1().GPUCheckpoints().Lister(), a.recorder, clock.RealClock{})
	klog.FromContext(ctx).Info("Storage tiers for containers on (Spill, FetchSpilled, ReleaseSpilled); no tier policy (--parked-memory-high-water)",
		"diskTierDir", o.Tiers.DiskDir, "objectStore", o.ObjectStoreSecret != "", "checkpointDir", o.CheckpointDir)
	return c, nil
}

// objectStore reads --object-store-secret and connects to the store it names.
func (a *agent) objectStore(ctx context.Context) (*storage.S3, error) {
	ctx, cancel := context.WithTimeout(ctx, objectStoreTimeout)
	defer cancel()
	ns, name, _ := strings.Cut(a.o.ObjectStoreSecret, "/")
	secret, err := a.kube.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("--object-store-secret=%s: %w", a.o.ObjectStoreSecret, err)
	}
	cfg, err := storage.S3ConfigFromSecret(secret.Data)
	if err != nil {
		return nil, fmt.Errorf("--object-store-secret=%s: %w", a.o.ObjectStoreSecret, err)
	}
	s3, err := storage.NewS3(cfg)
	if err != nil {
		return nil, fmt.Errorf("--object-store-secret=%s: %w", a.o.ObjectStoreSecret, err)
	}
	if err := s3.EnsureBucket(ctx); err != nil {
		klog.FromContext(ctx).Error(err, "Object store not reachable at start; uploads keep their images on disk and are retried", "objectStore", s3.String())
	}
	return s3, nil
}
