package killstorm

import (
	"fmt"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// labelWorkload names the workload a pod belongs to; replacements of migrated pods keep it.
const labelWorkload = "storm.kybernate.io/workload"

// auditHistory replays the recorded changes and returns every violation of the invariants that
// must hold at every moment:
//   - no GPU's accounted memory above its capacity: the gpu-memory of the pods resident on it
//     (as the scheduler accounts them), and the memory its GPUNode reports in use;
//   - no workload lost: once it has a pod, it always has one;
//   - no workload duplicated: never two of its pods running at once.
func auditHistory(changes []change, capacity map[string]int64) []string {
	var out []string
	pods := map[types.UID]*v1.Pod{}
	seen := map[string]bool{}
	for i, c := range changes {
		switch c.kind {
		case "GPUNode":
			gn := asGPUNode(c.obj)
			if gn == nil || c.typ == watch.Deleted {
				continue
			}
			for _, g := range gn.Status.GPUs {
				if g.MemoryUsedBytes > g.MemoryTotalBytes {
					out = append(out, fmt.Sprintf("change %d: GPUNode %s reports GPU %s using %d of %d bytes", i, gn.Name, g.UUID, g.MemoryUsedBytes, g.MemoryTotalBytes))
				}
			}
		case "Pod":
			p := asPod(c.obj)
			if p == nil {
				continue
			}
			if c.typ == watch.Deleted {
				delete(pods, p.UID)
			} else {
				pods[p.UID] = p
			}
			out = append(out, podInvariants(i, pods, capacity, seen)...)
		}
	}
	return out
}

func podInvariants(i int, pods map[types.UID]*v1.Pod, capacity map[string]int64, seen map[string]bool) []string {
	var out []string
	used := map[string]int64{}
	alive := map[string]int{}
	running := map[string][]string{}
	for _, p := range pods {
		if w := p.Labels[labelWorkload]; w != "" {
			seen[w] = true
			alive[w]++
			if isRunning(p) {
				running[w] = append(running[w], p.Name)
			}
		}
		if p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed || !gpupod.Resident(p) {
			continue
		}
		d, err := gpupod.PodDemand(p)
		if err != nil {
			continue
		}
		for _, u := range gpupod.AssignedGPUs(p) {
			used[u] += d.On(capacity[u])
		}
	}
	for u, b := range used {
		if b > capacity[u] {
			out = append(out, fmt.Sprintf("change %d: GPU %s has %d bytes of resident pods, capacity %d: %s", i, u, b, capacity[u], residents(pods, u)))
		}
	}
	for w := range seen {
		if alive[w] == 0 {
			out = append(out, fmt.Sprintf("change %d: workload %s has no pod", i, w))
		}
		if len(running[w]) > 1 {
			out = append(out, fmt.Sprintf("change %d: workload %s runs twice: %v", i, w, running[w]))
		}
	}
	return out
}

func residents(pods map[types.UID]*v1.Pod, uuid string) string {
	var names []string
	for _, p := range pods {
		if slices.Contains(gpupod.AssignedGPUs(p), uuid) && gpupod.Resident(p) {
			names = append(names, p.Name+"("+string(state(p))+")")
		}
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// state is the pod's GPU state, Running for a placed pod without the annotation.
func state(p *v1.Pod) kv1.PodGPUState {
	s := kv1.PodGPUState(p.Annotations[kv1.AnnotationState])
	if s == "" && p.Annotations[kv1.AnnotationGPUs] != "" {
		s = kv1.PodRunning
	}
	return s
}

// isRunning: the pod's processes run on its GPUs.
func isRunning(p *v1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Spec.NodeName != "" && state(p) == kv1.PodRunning
}

// settled is what must hold once the storm is over, or "": every workload has exactly one pod,
// Running or Suspended; no GPUCheckpoint is unfinished; every GPUNode's processes are the
// running pods' and its parked memory the suspended pods'.
func settled(pods []v1.Pod, cks []kv1.GPUCheckpoint, gns []kv1.GPUNode, workloads []string) []string {
	var out []string
	byWorkload := map[string][]*v1.Pod{}
	byName := map[string]*v1.Pod{}
	for i := range pods {
		p := &pods[i]
		byName[p.Namespace+"/"+p.Name] = p
		if w := p.Labels[labelWorkload]; w != "" {
			byWorkload[w] = append(byWorkload[w], p)
		}
	}
	for _, w := range workloads {
		ps := byWorkload[w]
		if len(ps) != 1 {
			var names []string
			for _, p := range ps {
				names = append(names, p.Name+"("+string(state(p))+")")
			}
			out = append(out, fmt.Sprintf("workload %s has %d pods %v, want 1", w, len(ps), names))
			continue
		}
		p := ps[0]
		if s := state(p); p.Status.Phase != v1.PodRunning || p.DeletionTimestamp != nil || (s != kv1.PodRunning && s != kv1.PodSuspended) {
			out = append(out, fmt.Sprintf("workload %s: pod %s is %s (phase %s), want Running or Suspended", w, p.Name, s, p.Status.Phase))
		}
	}
	for _, ck := range cks {
		if ck.Status.Phase != kv1.PhaseSucceeded && ck.Status.Phase != kv1.PhaseFailed {
			out = append(out, fmt.Sprintf("GPUCheckpoint %s (%s of %s) is %q", ck.Name, ck.Spec.Action, ck.Spec.PodName, ck.Status.Phase))
		}
	}
	for _, gn := range gns {
		for _, g := range gn.Status.GPUs {
			for _, u := range g.Pods {
				p := byName[u.Namespace+"/"+u.Name]
				if p == nil || p.Spec.NodeName != gn.Name || !isRunning(p) || !slices.Contains(gpupod.AssignedGPUs(p), g.UUID) {
					out = append(out, fmt.Sprintf("GPUNode %s: GPU %s has a process of %s/%s, which is not a pod running there", gn.Name, g.UUID, u.Namespace, u.Name))
				}
			}
		}
		for _, u := range gn.Status.SuspendedPods {
			p := byName[u.Namespace+"/"+u.Name]
			if p == nil || p.Spec.NodeName != gn.Name || state(p) != kv1.PodSuspended {
				out = append(out, fmt.Sprintf("GPUNode %s: parked memory of %s/%s, which is not a pod suspended there", gn.Name, u.Namespace, u.Name))
			}
		}
	}
	for _, p := range byName {
		if p.Labels[labelWorkload] == "" || !isRunning(p) {
			continue
		}
		if !hasProcess(gns, p) {
			out = append(out, fmt.Sprintf("pod %s runs on %s but its GPUNode shows no process of it", p.Name, p.Spec.NodeName))
		}
	}
	return out
}

func hasProcess(gns []kv1.GPUNode, p *v1.Pod) bool {
	for _, gn := range gns {
		for _, g := range gn.Status.GPUs {
			for _, u := range g.Pods {
				if u.Namespace == p.Namespace && u.Name == p.Name {
					return true
				}
			}
		}
	}
	return false
}
