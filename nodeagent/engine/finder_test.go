package engine

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/inventory"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

type pidPods map[int32]podmap.PodRef

func (m pidPods) PodOfPID(_ context.Context, pid int32) (podmap.PodRef, error) {
	if p, ok := m[pid]; ok {
		return p, nil
	}
	return podmap.PodRef{}, podmap.ErrNotInPod
}

func TestInventoryFinder(t *testing.T) {
	other := podmap.PodRef{Namespace: "ml", Name: "other", UID: "uid-other"}
	f := InventoryFinder{
		Inventory: &inventory.Static{Inventory: &inventory.Inventory{GPUs: []inventory.GPU{
			{UUID: gpu0.String(), Processes: []inventory.Process{{PID: 10, UsedBytes: 5}, {PID: 11, UsedBytes: 7}, {PID: 99, UsedBytes: 1}}},
			// pid 10 uses two GPUs; pid 12 is the other pod's.
			{UUID: gpu1.String(), Index: 1, Processes: []inventory.Process{{PID: 10, UsedBytes: 3}, {PID: 12, UsedBytes: 2}}},
		}}},
		Pods: pidPods{10: train, 11: train, 12: other},
	}
	got, err := f.Processes(t.Context(), train)
	if err != nil {
		t.Fatal(err)
	}
	want := []Process{
		{PID: 10, GPU: gpu0, Bytes: 8, State: cuda.ProcessStateRunning, Footprint: map[cuda.UUID]int64{gpu0: 5, gpu1: 3}},
		{PID: 11, GPU: gpu0, Bytes: 7, State: cuda.ProcessStateRunning, Footprint: map[cuda.UUID]int64{gpu0: 7}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("processes (-want +got):\n%s", diff)
	}
}
