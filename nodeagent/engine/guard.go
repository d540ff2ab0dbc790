package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/inventory"
)

// DefaultRestoreMargin is the free GPU memory a restore must leave beyond the footprint the
// process had before its checkpoint. Measured on H100, driver 580: a restore of a process that
// used 4838 MiB succeeded with 4901 MiB free (+64 MiB) and failed with 4837 MiB free.
const DefaultRestoreMargin int64 = 256 << 20

// GPUMemory reports the free memory of the node's GPUs, as NVML sees it, and each GPU's
// capacity for processes: what would be free with no process on it (total less what the driver
// reserves).
type GPUMemory interface {
	FreeGPUMemory(ctx context.Context) (free, capacity map[cuda.UUID]int64, err error)
}

// InventoryMemory is GPUMemory on an NVML inventory: total less used (nvmlDeviceGetMemoryInfo).
type InventoryMemory struct {
	Inventory inventory.Source
}

var _ GPUMemory = InventoryMemory{}

// FreeGPUMemory returns every GPU's free memory and capacity: free plus what its compute
// processes use.
func (m InventoryMemory) FreeGPUMemory(ctx context.Context) (free, capacity map[cuda.UUID]int64, err error) {
	inv, err := m.Inventory.Read(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("reading gpu inventory: %w", err)
	}
	free, capacity = make(map[cuda.UUID]int64, len(inv.GPUs)), make(map[cuda.UUID]int64, len(inv.GPUs))
	for _, g := range inv.GPUs {
		u, err := cuda.ParseUUID(g.UUID)
		if err != nil {
			return nil, nil, fmt.Errorf("gpu %d: %w", g.Index, err)
		}
		free[u] = max(g.MemoryTotalBytes-g.MemoryUsedBytes, 0)
		capacity[u] = free[u]
		for _, p := range g.Processes {
			capacity[u] += p.UsedBytes
		}
		capacity[u] = min(capacity[u], g.MemoryTotalBytes)
	}
	return free, capacity, nil
}

// ErrInsufficientGPUMemory is wrapped when a restore is refused before the driver is called:
// a target GPU has less free memory than the memory going onto it plus the margin. Nothing
// changed; the restore may succeed once memory is free.
var ErrInsufficientGPUMemory = errors.New("not enough free gpu memory to restore")

// ErrGPUStateLost is wrapped when the driver refused a restore for lack of GPU memory: on
// driver 580 the process's GPU state is then gone; no later restore succeeds.
var ErrGPUStateLost = errors.New("the driver refused the restore for lack of gpu memory, which destroys the process's gpu state")

// footprint is the memory a process needs on each GPU to be restored: its NVML footprint
// before the checkpoint, per GPU it was on.
func footprint(pr Process) map[cuda.UUID]int64 {
	if len(pr.Footprint) > 0 {
		return pr.Footprint
	}
	return map[cuda.UUID]int64{pr.GPU: pr.Bytes}
}

// restoreNeeds is the memory each target GPU must have free to take procs, which move by
// moves (old GPU -> new GPU; GPUs not in moves stay).
func restoreNeeds(procs []Process, moves map[cuda.UUID]cuda.UUID) map[cuda.UUID]int64 {
	need := map[cuda.UUID]int64{}
	for _, pr := range procs {
		for g, b := range footprint(pr) {
			if t, ok := moves[g]; ok {
				g = t
			}
			need[g] += b
		}
	}
	return need
}

// checkGPUMemory is the restore guard: it refuses, with an error wrapping
// ErrInsufficientGPUMemory, unless every GPU in need has at least its need plus the margin
// free. The driver destroys a process's GPU state when it refuses a restore for lack of
// memory, so the agent never lets it try. The margin is capped at what the GPU could ever
// offer beyond the need (its capacity for processes): a pod that had a GPU almost to itself is
// restored once the GPU is empty, as nothing would ever make more memory free for it.
func (e *Engine) checkGPUMemory(ctx context.Context, need map[cuda.UUID]int64) error {
	free, capacity, err := e.gpuMem.FreeGPUMemory(ctx)
	if err != nil {
		return fmt.Errorf("reading free gpu memory: %w", err)
	}
	var short []string
	for _, g := range slices.SortedFunc(maps.Keys(need), func(a, b cuda.UUID) int { return strings.Compare(a.String(), b.String()) }) {
		f, ok := free[g]
		if !ok {
			return fmt.Errorf("gpu %s: no memory reading for it", g)
		}
		margin := min(e.cfg.RestoreMargin, max(capacity[g]-need[g], 0))
		if f < need[g]+margin {
			short = append(short, fmt.Sprintf("gpu %s has %s free, needs %s (the processes' footprint before the checkpoint) + %s margin",
				g, quantity(f), quantity(need[g]), quantity(margin)))
		}
	}
	if len(short) > 0 {
		return fmt.Errorf("%w: %s", ErrInsufficientGPUMemory, strings.Join(short, "; "))
	}
	return nil
}
