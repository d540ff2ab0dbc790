package gpupod

// Spreading. Pods resident together on one GPU share its compute (the driver time-slices their
// contexts), so while another GPU stands unused each of them runs at a fraction of the speed it
// could. Bin-packing (MostAllocated) puts pods together to keep large GPUs whole for large
// pods; once nothing waits for those GPUs any more (the queue has drained, pods have finished),
// the packing only slows the pods down. Spread is the rule that undoes it: the spreading
// controller of kybernate-scheduler acts on it, and the time-slice simulation
// (test/bench/timeslice) runs the same function, so that its figures are the system's.

// SpreadGPU is a GPU as the spreading rule sees it.
type SpreadGPU struct {
	// Node is the GPU's node.
	Node string
	// Model and Total are the GPU's model and memory: what a pod must fit.
	Model string
	Total int64
	// Unused: no pod holds the GPU (resident, suspended, or on its way there or away), no other
	// process's memory is on it, and nothing waits for it. Only unused GPUs take a pod.
	Unused bool
}

// SpreadPod is a pod whose memory is on one GPU, or on its way there.
type SpreadPod struct {
	// GPU is the index of its GPU among the rule's GPUs.
	GPU int
	// Bytes is the memory a move carries.
	Bytes int64
	// Model is the GPU model the pod asks for; "" takes any.
	Model string
	// Movable: resident and free to move now. A pod that is not (on its way to the GPU, or
	// never suspended) still shares the GPU.
	Movable bool
}

// SpreadMove is a move decided by Spread: the pod of that index goes onto the GPU of that index.
type SpreadMove struct{ Pod, GPU int }

// Spread decides which pods move onto unused GPUs. For each unused GPU, in the order given, it
// takes one movable pod that the GPU holds from a GPU that at least two pods share: one on the
// GPU's node if there is one (a suspend and a resume there), else, with acrossNodes, one of
// another node (a migration); among those the fewest bytes (the cheapest move), then the first
// given. Each move counts before the next is decided: a GPU is left with one pod at least,
// and the target takes no second pod, so a pod never moves back and forth.
func Spread(gpus []SpreadGPU, pods []SpreadPod, acrossNodes bool) []SpreadMove {
	sharing := make([]int, len(gpus))
	for _, p := range pods {
		if p.GPU >= 0 && p.GPU < len(gpus) {
			sharing[p.GPU]++
		}
	}
	moved := make([]bool, len(pods))
	var moves []SpreadMove
	for g, target := range gpus {
		if !target.Unused {
			continue
		}
		best := -1
		bestSame := false
		for i, p := range pods {
			if moved[i] || !p.Movable || p.GPU < 0 || p.GPU >= len(gpus) || sharing[p.GPU] < 2 ||
				!modelMatches(p.Model, target.Model) || p.Bytes > target.Total {
				continue
			}
			same := gpus[p.GPU].Node == target.Node
			if !same && !acrossNodes {
				continue
			}
			if best < 0 || (same && !bestSame) || (same == bestSame && p.Bytes < pods[best].Bytes) {
				best, bestSame = i, same
			}
		}
		if best < 0 {
			continue
		}
		moved[best] = true
		sharing[pods[best].GPU]--
		sharing[g]++
		moves = append(moves, SpreadMove{Pod: best, GPU: g})
	}
	return moves
}
