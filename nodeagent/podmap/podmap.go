package podmap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// PodRef names a pod.
type PodRef struct {
	Namespace string
	Name      string
	UID       types.UID
}

// String renders the pod as namespace/name.
func (p PodRef) String() string { return p.Namespace + "/" + p.Name }

// ErrUnknownPod is wrapped when a process's pod is not known (yet) to the lookups: a pod the
// API has not shown the agent yet, or one that was just deleted.
var ErrUnknownPod = errors.New("pod not known")

// PodsByUID finds pods by UID, e.g. in an informer's cache.
type PodsByUID interface {
	PodByUID(uid types.UID) (PodRef, bool)
}

// ContainerLookup finds the pod of a container by its runtime ID: in containerd, the
// container's labels io.kubernetes.pod.namespace, .name and .uid in namespace k8s.io.
type ContainerLookup interface {
	PodOfContainer(ctx context.Context, id string) (PodRef, error)
}

// ContainerMap is a ContainerLookup over a fixed map from container ID to pod; tests use it
// where containerd would be asked.
type ContainerMap map[string]PodRef

var _ ContainerLookup = ContainerMap(nil)

// PodOfContainer returns the pod of container id.
func (m ContainerMap) PodOfContainer(_ context.Context, id string) (PodRef, error) {
	p, ok := m[id]
	if !ok {
		return PodRef{}, fmt.Errorf("container %s: %w", id, ErrUnknownPod)
	}
	return p, nil
}

// Resolver maps PIDs to pods.
type Resolver struct {
	// ProcRoot is where /proc is mounted; the host's for an agent with hostPID.
	ProcRoot string
	// Pods finds a pod by the UID in its cgroup path.
	Pods PodsByUID
	// Containers, when set, is asked when Pods does not know the UID.
	Containers ContainerLookup
}

// PodOfPID returns the pod whose container runs pid. Errors wrap ErrNotInPod for processes that
// are not in a pod, ErrUnknownPod for pods the lookups do not know, and os.ErrNotExist for
// processes that are gone.
func (r *Resolver) PodOfPID(ctx context.Context, pid int32) (PodRef, error) {
	root := r.ProcRoot
	if root == "" {
		root = "/proc"
	}
	f, err := os.Open(filepath.Join(root, strconv.Itoa(int(pid)), "cgroup"))
	if err != nil {
		return PodRef{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	defer f.Close()
	c, err := ParseCgroupFile(f)
	if err != nil {
		return PodRef{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	if r.Pods != nil {
		if p, ok := r.Pods.PodByUID(c.PodUID); ok {
			return p, nil
		}
	}
	if r.Containers != nil && c.ID != "" {
		p, err := r.Containers.PodOfContainer(ctx, c.ID)
		if err != nil {
			return PodRef{}, fmt.Errorf("pid %d in pod %s: %w", pid, c.PodUID, err)
		}
		return p, nil
	}
	return PodRef{}, fmt.Errorf("pid %d in pod %s: %w", pid, c.PodUID, ErrUnknownPod)
}

// UIDIndex is the name of the pod informer index AddUIDIndex adds.
const UIDIndex = "kybernate.io/uid"

// AddUIDIndex indexes a pod informer by UID. Call it before the informer starts.
func AddUIDIndex(informer cache.SharedIndexInformer) error {
	err := informer.AddIndexers(cache.Indexers{UIDIndex: func(obj interface{}) ([]string, error) {
		pod, ok := obj.(*v1.Pod)
		if !ok {
			return nil, nil
		}
		return []string{string(pod.UID)}, nil
	}})
	if err != nil {
		return fmt.Errorf("adding pod uid index: %w", err)
	}
	return nil
}

// IndexedPods is PodsByUID on an informer indexed with AddUIDIndex.
type IndexedPods struct {
	Indexer cache.Indexer
}

var _ PodsByUID = IndexedPods{}

// PodByUID returns the pod with uid from the informer's cache.
func (p IndexedPods) PodByUID(uid types.UID) (PodRef, bool) {
	objs, err := p.Indexer.ByIndex(UIDIndex, string(uid))
	if err != nil || len(objs) == 0 {
		return PodRef{}, false
	}
	pod, ok := objs[0].(*v1.Pod)
	if !ok {
		return PodRef{}, false
	}
	return PodRef{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}, true
}
