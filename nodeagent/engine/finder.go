package engine

import (
	"context"
	"fmt"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/inventory"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// PodResolver maps a PID to its pod.
type PodResolver interface {
	PodOfPID(ctx context.Context, pid int32) (podmap.PodRef, error)
}

// InventoryFinder finds a pod's processes among the GPU processes of the node's inventory
// (NVML): the ones whose memory is on a GPU. A process with memory on several GPUs is one
// Process, on the first of them, with all its bytes; its Footprint has them per GPU.
type InventoryFinder struct {
	Inventory inventory.Source
	Pods      PodResolver
}

var _ ProcessFinder = InventoryFinder{}

// Processes returns the pod's resident GPU processes.
func (f InventoryFinder) Processes(ctx context.Context, pod podmap.PodRef) ([]Process, error) {
	inv, err := f.Inventory.Read(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading gpu inventory: %w", err)
	}
	var out []Process
	index := map[int32]int{}
	for _, g := range inv.GPUs {
		for _, p := range g.Processes {
			u, err := cuda.ParseUUID(g.UUID)
			if err != nil {
				return nil, fmt.Errorf("gpu %d: %w", g.Index, err)
			}
			if i, ok := index[p.PID]; ok {
				out[i].Bytes += p.UsedBytes
				out[i].Footprint[u] += p.UsedBytes
				continue
			}
			// A process that is in no pod, is gone meanwhile or cannot be read is not the pod's
			// as far as the agent can tell.
			ref, err := f.Pods.PodOfPID(ctx, p.PID)
			if err != nil || ref.UID != pod.UID {
				continue
			}
			index[p.PID] = len(out)
			out = append(out, Process{PID: int(p.PID), GPU: u, Bytes: p.UsedBytes, State: cuda.ProcessStateRunning,
				Footprint: map[cuda.UUID]int64{u: p.UsedBytes}})
		}
	}
	return out, nil
}
