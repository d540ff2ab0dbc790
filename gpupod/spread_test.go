package gpupod

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSpread(t *testing.T) {
	const gi = int64(1) << 30
	gpu := func(node string, unused bool) SpreadGPU {
		return SpreadGPU{Node: node, Model: "NVIDIA H100 80GB HBM3", Total: 80 * gi, Unused: unused}
	}
	pod := func(g int, gib int64) SpreadPod { return SpreadPod{GPU: g, Bytes: gib * gi, Movable: true} }
	tests := []struct {
		name        string
		gpus        []SpreadGPU
		pods        []SpreadPod
		acrossNodes bool
		want        []SpreadMove
	}{{
		name: "the smaller of two pods sharing a GPU moves onto the unused one",
		gpus: []SpreadGPU{gpu("a", false), gpu("a", true)},
		pods: []SpreadPod{pod(0, 40), pod(0, 20)},
		want: []SpreadMove{{Pod: 1, GPU: 1}},
	}, {
		name: "equal sizes: the first given",
		gpus: []SpreadGPU{gpu("a", false), gpu("a", true)},
		pods: []SpreadPod{pod(0, 30), pod(0, 30)},
		want: []SpreadMove{{Pod: 0, GPU: 1}},
	}, {
		name: "a pod alone on its GPU stays",
		gpus: []SpreadGPU{gpu("a", false), gpu("a", false), gpu("a", true)},
		pods: []SpreadPod{pod(0, 10), pod(1, 10)},
	}, {
		name: "no unused GPU: nothing moves",
		gpus: []SpreadGPU{gpu("a", false), gpu("a", false)},
		pods: []SpreadPod{pod(0, 10), pod(0, 10), pod(1, 10)},
	}, {
		name: "a pod that may not move still shares its GPU; the other moves",
		gpus: []SpreadGPU{gpu("a", false), gpu("a", true)},
		pods: []SpreadPod{{GPU: 0, Bytes: 10 * gi}, pod(0, 40)},
		want: []SpreadMove{{Pod: 1, GPU: 1}},
	}, {
		name: "two unused GPUs take one pod each; the source keeps one",
		gpus: []SpreadGPU{gpu("a", false), gpu("a", true), gpu("a", true)},
		pods: []SpreadPod{pod(0, 20), pod(0, 20), pod(0, 20)},
		want: []SpreadMove{{Pod: 0, GPU: 1}, {Pod: 1, GPU: 2}},
	}, {
		name: "more unused GPUs than shared pods: a GPU with one pod left gives none away",
		gpus: []SpreadGPU{gpu("a", false), gpu("a", true), gpu("a", true)},
		pods: []SpreadPod{pod(0, 20), pod(0, 20)},
		want: []SpreadMove{{Pod: 0, GPU: 1}},
	}, {
		name: "pods of other nodes stay without acrossNodes",
		gpus: []SpreadGPU{gpu("a", false), gpu("b", true)},
		pods: []SpreadPod{pod(0, 10), pod(0, 10)},
	}, {
		name:        "across nodes: the GPU's own node first, even when larger",
		gpus:        []SpreadGPU{gpu("a", false), gpu("b", false), gpu("b", true)},
		pods:        []SpreadPod{pod(0, 10), pod(0, 10), pod(1, 40), pod(1, 40)},
		acrossNodes: true,
		want:        []SpreadMove{{Pod: 2, GPU: 2}},
	}, {
		name:        "across nodes when the node has none to give",
		gpus:        []SpreadGPU{gpu("a", false), gpu("b", true)},
		pods:        []SpreadPod{pod(0, 40), pod(0, 10)},
		acrossNodes: true,
		want:        []SpreadMove{{Pod: 1, GPU: 1}},
	}, {
		name: "a pod asking for another model or more memory than the GPU has stays",
		gpus: []SpreadGPU{gpu("a", false), {Node: "a", Model: "NVIDIA A100-SXM4-40GB", Total: 40 * gi, Unused: true}},
		pods: []SpreadPod{{GPU: 0, Bytes: 10 * gi, Model: "NVIDIA H100 80GB HBM3", Movable: true}, pod(0, 60)},
	}, {
		name: "the model matches loosely, as the label form",
		gpus: []SpreadGPU{gpu("a", false), gpu("a", true)},
		pods: []SpreadPod{{GPU: 0, Bytes: 10 * gi, Model: "NVIDIA-H100-80GB-HBM3", Movable: true}, {GPU: 0, Bytes: 10 * gi}},
		want: []SpreadMove{{Pod: 0, GPU: 1}},
	}, {
		name: "a pod with a GPU index out of range is ignored",
		gpus: []SpreadGPU{gpu("a", true)},
		pods: []SpreadPod{pod(3, 10), pod(-1, 10)},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Spread(tt.gpus, tt.pods, tt.acrossNodes)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Spread (-want +got):\n%s", diff)
			}
		})
	}
}
