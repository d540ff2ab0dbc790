package gpupod

import (
	"cmp"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/kybernate/kybernate/apis/config"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// defaultSlotsPerGPU applies when a GPUNode does not say: one pod per GPU.
const defaultSlotsPerGPU = 1

// gpu is one GPU of a node as Kybernate accounts for it.
type gpu struct {
	uuid  string
	index int32
	model string
	total int64
	// used is the VRAM taken: the demand of the resident pods assigned to the GPU plus memory
	// the agent sees used by processes that are not those pods'.
	used int64
	// pods is how many pods are assigned to the GPU, resident or suspended: each holds a slot.
	pods int
}

func (g *gpu) free() int64 { return max(g.total-g.used, 0) }

// nodeGPUs is the accounting of one node's GPUs.
type nodeGPUs struct {
	gpus        []gpu
	slotsPerGPU int
}

// newNodeGPUs accounts a node's GPUs: the inventory from its GPUNode and the pods on the node
// (bound and assumed, from the scheduler's snapshot or an informer, as the Ledger corrects
// them).
func newNodeGPUs(gn *kv1.GPUNode, pods []*v1.Pod) *nodeGPUs {
	n := &nodeGPUs{gpus: make([]gpu, 0, len(gn.Status.GPUs)), slotsPerGPU: defaultSlotsPerGPU}
	if gn.Spec.SlotsPerGPU != nil && *gn.Spec.SlotsPerGPU > 0 {
		n.slotsPerGPU = int(*gn.Spec.SlotsPerGPU)
	}
	byUUID := make(map[string]int, len(gn.Status.GPUs))
	// reported is what the agent saw each resident pod use on each GPU (NVML).
	reported := make(map[string]map[string]int64, len(gn.Status.GPUs))
	for _, s := range gn.Status.GPUs {
		var attributed int64
		for _, p := range s.Pods {
			attributed += p.Bytes
			if reported[s.UUID] == nil {
				reported[s.UUID] = map[string]int64{}
			}
			reported[s.UUID][p.UID] += p.Bytes
		}
		byUUID[s.UUID] = len(n.gpus)
		n.gpus = append(n.gpus, gpu{
			uuid:  s.UUID,
			index: s.Index,
			model: s.Model,
			total: s.MemoryTotalBytes,
			// Memory of processes that belong to no pod the agent knows (e.g. a host process).
			used: max(s.MemoryUsedBytes-attributed, 0),
		})
	}
	// Pods on the node without GPUs yet: nominated preemptors the framework adds while
	// filtering for others. They are placed after the rest, where they would go.
	var unplaced []Demand
	for _, pod := range pods {
		if pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
			continue
		}
		d, err := PodDemand(pod)
		if err != nil || d.Count == 0 {
			continue
		}
		uuids := AssignedGPUs(pod)
		if len(uuids) == 0 {
			if pod.Spec.NodeName == "" {
				unplaced = append(unplaced, d)
			}
			continue
		}
		isResident := Resident(pod)
		for _, uuid := range uuids {
			i, ok := byUUID[uuid]
			if !ok {
				continue
			}
			g := &n.gpus[i]
			g.pods++
			if isResident {
				// A pod that uses more than it declared takes what it uses.
				g.used += max(d.On(g.total), reported[uuid][string(pod.UID)])
			}
		}
	}
	for _, d := range unplaced {
		for _, g := range n.choose(d, config.MostAllocated) {
			g.pods++
			g.used += d.On(g.total)
		}
	}
	return n
}

// modelMatches compares GPU model names loosely: "NVIDIA H100 80GB HBM3" matches the label
// form "NVIDIA-H100-80GB-HBM3".
func modelMatches(want, have string) bool {
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), " ", "-")) }
	return want == "" || norm(want) == norm(have)
}

// compatible reports whether the GPU could ever hold the demand: right model, large enough.
func (g *gpu) compatible(d Demand) bool {
	return modelMatches(d.Model, g.model) && (d.Whole() || d.Bytes <= g.total)
}

// fits reports whether the GPU can take the demand now.
func (g *gpu) fits(d Demand, slots int) bool {
	return g.compatible(d) && g.pods < slots && g.hasRoom(d)
}

// hasRoom reports whether the GPU's free memory takes the demand, its headroom included.
func (g *gpu) hasRoom(d Demand) bool {
	if d.Whole() {
		return g.used == 0
	}
	return d.Bytes+d.Headroom <= g.free()
}

// possible reports whether the node could hold the demand if it were empty.
func (n *nodeGPUs) possible(d Demand) bool {
	compatible := 0
	for i := range n.gpus {
		if n.gpus[i].compatible(d) {
			compatible++
		}
	}
	return compatible >= d.Count
}

// choose picks the GPUs for a demand, or nil when it does not fit now. MostAllocated takes the
// GPUs with the least memory left that still fit (best fit, keeps large GPUs whole);
// LeastAllocated the emptiest. Ties go to the lower index, so choices are deterministic.
func (n *nodeGPUs) choose(d Demand, strategy config.ScoringStrategyType) []*gpu {
	order := func(a, b *gpu) int {
		left := cmp.Compare(a.free()-d.On(a.total), b.free()-d.On(b.total))
		if strategy == config.LeastAllocated {
			left = -left
		}
		return cmp.Or(left, cmp.Compare(a.index, b.index))
	}
	if d.Count == 1 {
		// The order is total (indexes differ): the least fitting GPU is the first of the
		// sorted list below, found without building it.
		var best *gpu
		for i := range n.gpus {
			if g := &n.gpus[i]; g.fits(d, n.slotsPerGPU) && (best == nil || order(g, best) < 0) {
				best = g
			}
		}
		if best == nil {
			return nil
		}
		return []*gpu{best}
	}
	if n.fitting(d) < d.Count {
		return nil
	}
	fit := make([]*gpu, 0, len(n.gpus))
	for i := range n.gpus {
		if n.gpus[i].fits(d, n.slotsPerGPU) {
			fit = append(fit, &n.gpus[i])
		}
	}
	slices.SortFunc(fit, order)
	return fit[:d.Count]
}

// fitting counts the GPUs that can take the demand now.
func (n *nodeGPUs) fitting(d Demand) int {
	count := 0
	for i := range n.gpus {
		if n.gpus[i].fits(d, n.slotsPerGPU) {
			count++
		}
	}
	return count
}

// scoreOf rates a choice from 0 to 100: the share of the chosen GPUs' memory in use once the pod is
// on them (MostAllocated), or the share left free (LeastAllocated).
func scoreOf(chosen []*gpu, d Demand, strategy config.ScoringStrategyType) int64 {
	var used, total int64
	for _, g := range chosen {
		used += g.used + d.On(g.total)
		total += g.total
	}
	if total == 0 {
		return 0
	}
	s := min(used*100/total, 100)
	if strategy == config.LeastAllocated {
		return 100 - s
	}
	return s
}

func uuids(chosen []*gpu) []string {
	out := make([]string, len(chosen))
	for i, g := range chosen {
		out[i] = g.uuid
	}
	return out
}

// Accounting is the GPU accounting of one node: the VRAM and slots its pods take on each GPU.
// GPUShare filters, scores and reserves with it; the controllers place pods with it outside a
// scheduling cycle, by the same rules. Its reading methods (Possible, Choose, Score, Fits,
// FitsSlotHeld, MoreRoomThan) may run concurrently; Take, Use, Release and Hold may not run
// beside anything else.
type Accounting struct{ n *nodeGPUs }

// NewAccounting accounts a node's GPUs from its GPUNode and the pods bound to it. Pods placed in
// this program that the caller's view does not show yet come from Ledger.Pods.
func NewAccounting(gn *kv1.GPUNode, pods []*v1.Pod) *Accounting {
	return &Accounting{n: newNodeGPUs(gn, pods)}
}

// Possible reports whether the node could hold the demand if it were empty.
func (a *Accounting) Possible(d Demand) bool { return a.n.possible(d) }

// Score rates the GPUs chosen for the demand from 0 to 100: the share of their memory in use
// once the pod is on them (MostAllocated), or the share left free (LeastAllocated).
func (a *Accounting) Score(chosen []string, d Demand, strategy config.ScoringStrategyType) int64 {
	gpus := make([]*gpu, 0, len(chosen))
	for _, u := range chosen {
		if g := a.gpu(u); g != nil {
			gpus = append(gpus, g)
		}
	}
	return scoreOf(gpus, d, strategy)
}

// Fits reports whether the demand fits on exactly these GPUs now.
func (a *Accounting) Fits(d Demand, uuids []string) bool {
	if len(uuids) != d.Count {
		return false
	}
	for _, u := range uuids {
		g := a.gpu(u)
		if g == nil || !g.fits(d, a.n.slotsPerGPU) {
			return false
		}
	}
	return true
}

// FitsSlotHeld is Fits for a pod that already holds a slot on the given GPUs (a suspended pod
// that resumes where it was): only the VRAM must be free.
func (a *Accounting) FitsSlotHeld(d Demand, uuids []string) bool {
	if len(uuids) != d.Count {
		return false
	}
	for _, u := range uuids {
		g := a.gpu(u)
		if g == nil || !g.compatible(d) || !g.hasRoom(d) {
			return false
		}
	}
	return true
}

// Choose picks GPUs for the demand by the strategy, or returns nil when it does not fit now.
func (a *Accounting) Choose(d Demand, strategy config.ScoringStrategyType) []string {
	chosen := a.n.choose(d, strategy)
	if chosen == nil {
		return nil
	}
	return uuids(chosen)
}

// FitsNow reports whether Choose would pick GPUs for the demand, without picking them.
func (a *Accounting) FitsNow(d Demand) bool { return a.n.fitting(d) >= d.Count }

// ChooseScore is Score of the GPUs Choose picks, without naming them; ok is false when the
// demand does not fit now.
func (a *Accounting) ChooseScore(d Demand, strategy config.ScoringStrategyType) (score int64, ok bool) {
	chosen := a.n.choose(d, strategy)
	if chosen == nil {
		return 0, false
	}
	return scoreOf(chosen, d, strategy), true
}

// Take records a pod resident on the GPUs: a slot and the demand's VRAM on each.
func (a *Accounting) Take(d Demand, uuids []string) {
	a.Hold(uuids)
	a.Use(d, uuids)
}

// Use records the demand's VRAM on the GPUs of a pod that holds its slots already.
func (a *Accounting) Use(d Demand, uuids []string) {
	for _, u := range uuids {
		if g := a.gpu(u); g != nil {
			g.used += d.On(g.total)
		}
	}
}

// Release forgets a pod's slot on the GPUs (it moves elsewhere).
func (a *Accounting) Release(uuids []string) {
	for _, u := range uuids {
		if g := a.gpu(u); g != nil && g.pods > 0 {
			g.pods--
		}
	}
}

// Hold records a pod's slot on the GPUs without VRAM (a suspended pod).
func (a *Accounting) Hold(uuids []string) {
	for _, u := range uuids {
		if g := a.gpu(u); g != nil {
			g.pods++
		}
	}
}

func (a *Accounting) gpu(uuid string) *gpu {
	for i := range a.n.gpus {
		if a.n.gpus[i].uuid == uuid {
			return &a.n.gpus[i]
		}
	}
	return nil
}

// MoreRoomThan reports whether the node has room the earlier accounting did not: more slots
// per GPU, a GPU added, or more free memory on some GPU.
func (a *Accounting) MoreRoomThan(before *Accounting) bool {
	if a.n.slotsPerGPU > before.n.slotsPerGPU {
		return true
	}
	free := make(map[string]int64, len(before.n.gpus))
	for _, g := range before.n.gpus {
		free[g.uuid] = g.free()
	}
	for _, g := range a.n.gpus {
		if was, ok := free[g.uuid]; !ok || g.free() > was {
			return true
		}
	}
	return false
}
