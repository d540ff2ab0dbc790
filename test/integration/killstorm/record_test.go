package killstorm

import (
	"context"
	"fmt"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// change is one watch event of the run.
type change struct {
	at   time.Time
	kind string // Pod, GPUNode, GPUCheckpoint
	typ  watch.EventType
	obj  runtime.Object
}

// recorder keeps every change of the namespace's pods and GPUCheckpoints and of all GPUNodes
// from its start, in the order each watch delivered them. A watch that ends is resumed from
// the last resource version it delivered; an error event (a watch that cannot go on, such as
// an expired resource version) is recorded as a failure of the run.
type recorder struct {
	mu      sync.Mutex
	changes []change
	errs    []string

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type lister func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error)
type watcher func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)

func record(kube kubernetes.Interface, kyb versioned.Interface, ns string) (*recorder, error) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &recorder{cancel: cancel}
	sources := []struct {
		kind  string
		list  lister
		watch watcher
	}{
		{"Pod", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kube.CoreV1().Pods(ns).List(ctx, o)
		},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return kube.CoreV1().Pods(ns).Watch(ctx, o)
			}},
		{"GPUNode", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kyb.KybernateV1alpha1().GPUNodes().List(ctx, o)
		}, func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return kyb.KybernateV1alpha1().GPUNodes().Watch(ctx, o)
		}},
		{"GPUCheckpoint", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return kyb.KybernateV1alpha1().GPUCheckpoints(ns).List(ctx, o)
		}, func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return kyb.KybernateV1alpha1().GPUCheckpoints(ns).Watch(ctx, o)
		}},
	}
	for _, s := range sources {
		list, err := s.list(ctx, metav1.ListOptions{})
		if err != nil {
			cancel()
			return nil, fmt.Errorf("listing %ss: %w", s.kind, err)
		}
		lm, err := meta.ListAccessor(list)
		if err != nil {
			cancel()
			return nil, err
		}
		items, _ := meta.ExtractList(list)
		for _, it := range items {
			r.add(change{at: time.Now(), kind: s.kind, typ: watch.Added, obj: it})
		}
		r.wg.Go(func() { r.follow(ctx, s.kind, s.watch, lm.GetResourceVersion()) })
	}
	return r, nil
}

func (r *recorder) add(c change) {
	r.mu.Lock()
	r.changes = append(r.changes, c)
	r.mu.Unlock()
}

func (r *recorder) fail(format string, args ...any) {
	r.mu.Lock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

// follow watches from rv until ctx ends.
func (r *recorder) follow(ctx context.Context, kind string, w watcher, rv string) {
	for ctx.Err() == nil {
		wi, err := w(ctx, metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: true})
		if err != nil {
			if ctx.Err() == nil {
				r.fail("watch of %ss from resource version %s: %v", kind, rv, err)
			}
			return
		}
		for ev := range wi.ResultChan() {
			switch ev.Type {
			case watch.Error:
				if ctx.Err() == nil { // the end of the run cancels the watch with an error event
					r.fail("watch of %ss: error event %v", kind, ev.Object)
				}
				wi.Stop()
				return
			case watch.Bookmark:
			default:
				r.add(change{at: time.Now(), kind: kind, typ: ev.Type, obj: ev.Object})
			}
			if m, err := meta.Accessor(ev.Object); err == nil && m.GetResourceVersion() != "" {
				rv = m.GetResourceVersion()
			}
		}
		wi.Stop()
	}
}

// stop ends the watches and returns what they recorded.
func (r *recorder) stop() ([]change, []string) {
	r.cancel()
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changes, r.errs
}

func asPod(o runtime.Object) *v1.Pod                   { p, _ := o.(*v1.Pod); return p }
func asGPUNode(o runtime.Object) *kv1.GPUNode          { g, _ := o.(*kv1.GPUNode); return g }
func asCheckpoint(o runtime.Object) *kv1.GPUCheckpoint { c, _ := o.(*kv1.GPUCheckpoint); return c }

// describe is one line about a change, for the log of a failed run.
func describe(c change, start time.Time) string {
	at := fmt.Sprintf("%6.1fs %-8s %s", c.at.Sub(start).Seconds(), c.typ, c.kind)
	switch {
	case asPod(c.obj) != nil:
		p := asPod(c.obj)
		return fmt.Sprintf("%s %s node=%s phase=%s state=%s gpus=%s deleting=%v", at, p.Name, p.Spec.NodeName, p.Status.Phase,
			p.Annotations[kv1.AnnotationState], p.Annotations[kv1.AnnotationGPUs], p.DeletionTimestamp != nil)
	case asCheckpoint(c.obj) != nil:
		ck := asCheckpoint(c.obj)
		return fmt.Sprintf("%s %s %s/%s pod=%s node=%s phase=%s targets=%v msg=%q", at, ck.Name, ck.Spec.Action, ck.Spec.Reason, ck.Spec.PodName,
			ck.Status.NodeName, ck.Status.Phase, ck.Spec.TargetGPUs, ck.Status.Message)
	case asGPUNode(c.obj) != nil:
		gn := asGPUNode(c.obj)
		var gpus []string
		for _, g := range gn.Status.GPUs {
			var pods []string
			for _, u := range g.Pods {
				pods = append(pods, u.Name)
			}
			gpus = append(gpus, fmt.Sprintf("%s used=%dGi pods=%v", g.UUID[:12], g.MemoryUsedBytes>>30, pods))
		}
		var parked []string
		for _, u := range gn.Status.SuspendedPods {
			parked = append(parked, u.Name)
		}
		return fmt.Sprintf("%s %s %v parked=%v", at, gn.Name, gpus, parked)
	}
	return at
}
