package framework

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// GPUMemory is the memory of every GPU of the cluster's GPUNodes, by UUID.
func GPUMemory(ctx context.Context, kc versioned.Interface) (map[string]int64, error) {
	list, err := kc.KybernateV1alpha1().GPUNodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, n := range list.Items {
		for _, g := range n.Status.GPUs {
			out[g.UUID] = g.MemoryTotalBytes
		}
	}
	return out, nil
}

// AuditGPUs fails t for every moment of h at which a GPU of the cluster held more than slots
// pods or more memory than it has (Overcommits). Call it from t.Cleanup, after the test.
func AuditGPUs(t testing.TB, kc versioned.Interface, h *History, slots int) {
	t.Helper()
	memory, err := GPUMemory(context.WithoutCancel(t.Context()), kc)
	if err != nil {
		t.Errorf("listing GPUNodes: %v", err)
		return
	}
	for _, o := range h.Overcommits(memory, slots) {
		t.Errorf("overcommitted: %s", o)
	}
}

// HoldsGPU reports whether a version of a pod holds memory on its GPUs: it is bound, has
// kybernate.io/gpus, has not finished and is resident (gpupod.Resident: Suspending, Resuming,
// Checkpointing and Restoring hold the memory). A terminating pod no longer counts: the
// simulated agent drops its processes when the deletion starts.
func HoldsGPU(p *v1.Pod) bool {
	if p.Spec.NodeName == "" || len(gpupod.AssignedGPUs(p)) == 0 || p.DeletionTimestamp != nil ||
		p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed {
		return false
	}
	return gpupod.Resident(p)
}

// Overcommits replays the pod history and describes every moment at which a GPU was held by
// more than slots pods, or by pods asking more memory (gpupod.GPUMemory; none: the whole
// GPU) than memory, the bytes of each GPU by UUID. No GPU may ever hold more than it
// can, not even between two looks at the cluster.
func (h *History) Overcommits(memory map[string]int64, slots int) []string {
	live := map[string]*v1.Pod{}
	var out []string
	for _, c := range h.Pods() {
		if c.Type == watch.Deleted {
			delete(live, c.Pod.Name)
		} else {
			live[c.Pod.Name] = c.Pod
		}
		out = append(out, overcommitsAt(c.Time, live, memory, slots)...)
	}
	return out
}

func overcommitsAt(at time.Time, live map[string]*v1.Pod, memory map[string]int64, slots int) []string {
	holders := map[string][]string{}
	used := map[string]int64{}
	for _, p := range live {
		if !HoldsGPU(p) {
			continue
		}
		bytes, err := gpupod.GPUMemory(p)
		for _, g := range gpupod.AssignedGPUs(p) {
			holders[g] = append(holders[g], p.Name)
			if bytes == 0 || err != nil {
				used[g] += memory[g] // the whole GPU
			} else {
				used[g] += bytes
			}
		}
	}
	var out []string
	for g, names := range holders {
		if len(names) > slots || (memory[g] > 0 && used[g] > memory[g]) {
			sort.Strings(names)
			out = append(out, fmt.Sprintf("%s: GPU %s held by %v (%d bytes of %d, %d pods of %d slots)",
				at.Format("15:04:05.000"), g, names, used[g], memory[g], len(names), slots))
		}
	}
	sort.Strings(out)
	return out
}

// StatesOf is the sequence of GPU states (gpupod.StateOf) the pod went through once placed,
// consecutive repeats folded.
func (h *History) StatesOf(name string) []kv1.PodGPUState {
	var out []kv1.PodGPUState
	for _, c := range h.PodVersions(name) {
		if c.Pod.Annotations[kv1.AnnotationState] == "" && len(gpupod.AssignedGPUs(c.Pod)) == 0 {
			continue // not placed yet: no GPU state
		}
		if s := gpupod.StateOf(c.Pod); len(out) == 0 || out[len(out)-1] != s {
			out = append(out, s)
		}
	}
	return out
}

// Deletions names the pods whose deletion the history holds (a deletionTimestamp or a Deleted
// event), in order.
func (h *History) Deletions() []string {
	seen := map[string]bool{}
	var out []string
	for _, c := range h.Pods() {
		if (c.Type == watch.Deleted || c.Pod.DeletionTimestamp != nil) && !seen[c.Pod.Name] {
			seen[c.Pod.Name] = true
			out = append(out, c.Pod.Name)
		}
	}
	return out
}
