package framework

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// History records every change of a namespace's pods and GPUCheckpoints from the moment
// Record is called: a List, then a watch from the List's resourceVersion that reconnects by
// itself (client-go's RetryWatcher), so no change is missed. Tests wait on it and audit the
// whole history at the end instead of sampling the cluster or sleeping through a window:
// something that happened and was undone between two looks is in the history. A failed List,
// a watch error (a resourceVersion too old included) or a watch that ends early fails the test.
type History struct {
	ns    string
	start time.Time

	mu          sync.Mutex
	pods        []PodChange
	checkpoints []CheckpointChange
	errs        []error
	// changed is closed and replaced at every recorded change.
	changed chan struct{}
}

// PodChange is one change of a pod as a watch saw it (Added for the objects of the first List).
type PodChange struct {
	Time time.Time
	Type watch.EventType
	Pod  *v1.Pod
}

// CheckpointChange is one change of a GPUCheckpoint.
type CheckpointChange struct {
	Time       time.Time
	Type       watch.EventType
	Checkpoint *kv1.GPUCheckpoint
}

// Record starts recording ns's pods and GPUCheckpoints until the test ends; the recording is
// complete (Lists done, watches started) when it returns.
func (c *Cluster) Record(t testing.TB, ns string) *History {
	t.Helper()
	h := &History{ns: ns, start: time.Now(), changed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	kc := c.Kybernate(t)
	pods := c.Client.CoreV1().Pods(ns)
	cks := kc.KybernateV1alpha1().GPUCheckpoints(ns)
	sources := []struct {
		what string
		lw   *cache.ListWatch
	}{
		{"pods", &cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return pods.List(ctx, o) },
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return pods.Watch(ctx, o)
			},
		}},
		{"GPUCheckpoints", &cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return cks.List(ctx, o) },
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return cks.Watch(ctx, o)
			},
		}},
	}
	for _, s := range sources {
		w, err := h.listAndWatch(ctx, s.lw)
		if err != nil {
			cancel()
			wg.Wait()
			t.Fatalf("recording %s in %s: %v", s.what, ns, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.follow(ctx, s.what, w)
		}()
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		for _, err := range h.Errors() {
			t.Errorf("history of %s: %v", ns, err)
		}
	})
	return h
}

// listAndWatch records the List's objects as Added and returns a watch from its
// resourceVersion.
func (h *History) listAndWatch(ctx context.Context, lw *cache.ListWatch) (*watchtools.RetryWatcher, error) {
	list, err := lw.ListWithContext(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	items, err := meta.ExtractList(list)
	if err != nil {
		return nil, err
	}
	for _, obj := range items {
		h.add(watch.Added, obj)
	}
	rv, err := meta.NewAccessor().ResourceVersion(list)
	if err != nil {
		return nil, err
	}
	return watchtools.NewRetryWatcherWithContext(ctx, rv, lw)
}

// follow records w's events until ctx ends; an error event or an early end is an error.
func (h *History) follow(ctx context.Context, what string, w *watchtools.RetryWatcher) {
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.ResultChan():
			if !ok {
				if ctx.Err() == nil {
					h.fail(fmt.Errorf("watch of %s ended early", what))
				}
				return
			}
			switch ev.Type {
			case watch.Added, watch.Modified, watch.Deleted:
				h.add(ev.Type, ev.Object)
			case watch.Error:
				h.fail(fmt.Errorf("watch of %s: %v", what, apierrors.FromObject(ev.Object)))
				return
			}
		}
	}
}

func (h *History) add(typ watch.EventType, obj runtime.Object) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	switch o := obj.(type) {
	case *v1.Pod:
		h.pods = append(h.pods, PodChange{Time: now, Type: typ, Pod: o.DeepCopy()})
	case *kv1.GPUCheckpoint:
		h.checkpoints = append(h.checkpoints, CheckpointChange{Time: now, Type: typ, Checkpoint: o.DeepCopy()})
	default:
		h.errs = append(h.errs, fmt.Errorf("unexpected %T in a watch", obj))
	}
	close(h.changed)
	h.changed = make(chan struct{})
}

func (h *History) fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.errs = append(h.errs, err)
	close(h.changed)
	h.changed = make(chan struct{})
}

// Errors are the recording's errors so far; the test fails with them when it ends.
func (h *History) Errors() []error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]error(nil), h.errs...)
}

// Pods is every recorded pod change, in order.
func (h *History) Pods() []PodChange {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]PodChange(nil), h.pods...)
}

// Checkpoints is every recorded GPUCheckpoint change, in order.
func (h *History) Checkpoints() []CheckpointChange {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]CheckpointChange(nil), h.checkpoints...)
}

// PodVersions is every recorded version of the pod, in order (a deletion's last version too).
func (h *History) PodVersions(name string) []PodChange {
	var out []PodChange
	for _, c := range h.Pods() {
		if c.Pod.Name == name {
			out = append(out, c)
		}
	}
	return out
}

// Pod is the pod as last recorded; nil when never seen or deleted.
func (h *History) Pod(name string) *v1.Pod {
	versions := h.PodVersions(name)
	if len(versions) == 0 || versions[len(versions)-1].Type == watch.Deleted {
		return nil
	}
	return versions[len(versions)-1].Pod
}

// LatestPods is every pod that exists as last recorded, by name.
func (h *History) LatestPods() map[string]*v1.Pod {
	out := map[string]*v1.Pod{}
	for _, c := range h.Pods() {
		if c.Type == watch.Deleted {
			delete(out, c.Pod.Name)
		} else {
			out[c.Pod.Name] = c.Pod
		}
	}
	return out
}

// LatestCheckpoints is every GPUCheckpoint that exists as last recorded, in order of creation.
func (h *History) LatestCheckpoints() []*kv1.GPUCheckpoint {
	byName := map[string]int{}
	var out []*kv1.GPUCheckpoint
	for _, c := range h.Checkpoints() {
		i, seen := byName[c.Checkpoint.Name]
		switch {
		case c.Type == watch.Deleted && seen:
			out[i] = nil
		case !seen:
			byName[c.Checkpoint.Name] = len(out)
			out = append(out, c.Checkpoint)
		default:
			out[i] = c.Checkpoint
		}
	}
	live := out[:0]
	for _, ck := range out {
		if ck != nil {
			live = append(live, ck)
		}
	}
	return live
}

// Wait re-evaluates cond at every recorded change until it holds; it fails the test when it
// has not within timeout, or when the recording fails. what names the condition.
func (h *History) Wait(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		h.mu.Lock()
		changed, errs := h.changed, len(h.errs)
		h.mu.Unlock()
		if errs > 0 {
			t.Fatalf("waiting for %s: the recording failed: %v", what, h.Errors())
		}
		if cond() {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("waiting for %s: not done after %s", what, timeout)
		case <-t.Context().Done():
			t.Fatalf("waiting for %s: the test's context ended", what)
		}
	}
}

// WaitPod waits until the pod, as last recorded, satisfies cond and returns that version.
func (h *History) WaitPod(t testing.TB, name string, timeout time.Duration, what string, cond func(*v1.Pod) bool) *v1.Pod {
	t.Helper()
	var got *v1.Pod
	h.Wait(t, timeout, fmt.Sprintf("pod %s/%s %s", h.ns, name, what), func() bool {
		p := h.Pod(name)
		if p != nil && cond(p) {
			got = p
			return true
		}
		return false
	})
	return got
}
