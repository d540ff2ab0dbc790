package sim

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/nodeagent/engine"
)

// AnnotationForeignMemory (simulation only), on a simulated Node, gives GPUs memory held by
// processes outside Kybernate: "<gpu index>=<quantity>" pairs, comma separated, e.g.
// "0=20Gi,1=512Mi". NVML reports them as compute processes in no pod, so the GPUNode shows the
// memory used and the agent's restore guard sees it gone. Tests use it to show that a resume
// waits until such memory is free; real nodes never have it.
const AnnotationForeignMemory = kv1.AnnotationSimulatedForeignMemory

// foreignPID is the first PID of the simulated foreign processes: one per GPU, far above the
// pods' PIDs.
const foreignPID = 4_000_000

// ParseForeignMemory parses AnnotationForeignMemory for a node with gpus GPUs: bytes by GPU
// index.
func ParseForeignMemory(s string, gpus int) (map[int]uint64, error) {
	out := map[int]uint64{}
	s = strings.TrimSpace(s)
	if s == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		idx, qty, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("%q: want <gpu index>=<quantity>", part)
		}
		i, err := strconv.Atoi(strings.TrimSpace(idx))
		if err != nil || i < 0 || i >= gpus {
			return nil, fmt.Errorf("%q: gpu index %q: want 0..%d", part, idx, gpus-1)
		}
		if _, dup := out[i]; dup {
			return nil, fmt.Errorf("%q: gpu %d named twice", part, i)
		}
		q, err := gpupod.ParseQuantity(qty)
		if err != nil || q.Sign() < 0 {
			return nil, fmt.Errorf("%q: %q is not a quantity of bytes >= 0", part, qty)
		}
		out[i] = uint64(q.Value())
	}
	return out, nil
}

// SetForeignMemory makes the simulated foreign processes hold bytes on the GPUs by index:
// GPUs not named hold none. A GPU without room for what is asked keeps what it had, and the
// error says so.
func (m *Machine) SetForeignMemory(bytes map[int]uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []string
	for i, g := range m.gpus {
		pid := foreignPID + i
		want := bytes[i]
		p, ok := m.cuda.Process(pid)
		if ok && p.VRAM == want {
			continue
		}
		if ok {
			m.cuda.RemoveProcess(pid)
			m.foreign = slices.DeleteFunc(m.foreign, func(x int) bool { return x == pid })
		}
		if want == 0 {
			continue
		}
		if err := m.cuda.AddProcess(pid, g.uuid, want); err != nil {
			errs = append(errs, err.Error())
			if ok { // keep what it had
				_ = m.cuda.AddProcess(pid, g.uuid, p.VRAM)
				m.foreign = append(m.foreign, pid)
			}
			continue
		}
		m.foreign = append(m.foreign, pid)
	}
	if len(errs) > 0 {
		return fmt.Errorf("simulated foreign gpu memory on node %s: %s", m.node, strings.Join(errs, "; "))
	}
	return nil
}

// FreeGPUMemory is the GPUs' free memory as the simulated NVML reports it, for the restore
// guard.
func (m *Machine) FreeGPUMemory(ctx context.Context) (free, capacity map[cuda.UUID]int64, err error) {
	return engine.InventoryMemory{Inventory: m.inv}.FreeGPUMemory(ctx)
}

// Kill ends a simulated process, as SIGKILL would: its memory, on a GPU or parked, is free.
func (m *Machine) Kill(pid int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.cuda.Kill(pid); err != nil {
		return err
	}
	if p, ok := m.byPID[pid]; ok {
		p.procs = slices.DeleteFunc(p.procs, func(sp simProcess) bool { return sp.pid == pid })
		delete(m.byPID, pid)
	}
	return nil
}

var (
	_ engine.GPUMemory = (*Machine)(nil)
	_ engine.Killer    = (*Machine)(nil)
)
