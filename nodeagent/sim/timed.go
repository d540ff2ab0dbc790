package sim

import (
	"context"
	"time"

	"k8s.io/utils/clock"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/cuda/fake"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// TimedDriver is a simulated machine's CUDA driver whose checkpoints and restores take as long
// as on the real driver: the process's bytes at the measured rate (H200, driver 580: about
// 2.2 GB/s to checkpoint, 6 GB/s to restore). The process stays LOCKED while it waits, so its
// progress stops for the whole suspend, as a real process's would.
type TimedDriver struct {
	*fake.Driver
	// CheckpointRate and RestoreRate are bytes per second.
	CheckpointRate float64
	RestoreRate    float64
	Clock          clock.Clock
}

var _ cuda.Interface = (*TimedDriver)(nil)

// CheckpointProcessCheckpoint waits bytes/CheckpointRate, then checkpoints.
func (d *TimedDriver) CheckpointProcessCheckpoint(pid int) error {
	if p, ok := d.Process(pid); ok && p.State == cuda.ProcessStateLocked {
		<-d.Clock.After(Duration(p.VRAM, d.CheckpointRate))
	}
	return d.Driver.CheckpointProcessCheckpoint(pid)
}

// CheckpointProcessRestore waits bytes/RestoreRate, then restores.
func (d *TimedDriver) CheckpointProcessRestore(pid int, pairs []cuda.GPUPair) error {
	if p, ok := d.Process(pid); ok && p.State == cuda.ProcessStateCheckpointed {
		<-d.Clock.After(Duration(p.VRAM, d.RestoreRate))
	}
	return d.Driver.CheckpointProcessRestore(pid, pairs)
}

// Duration is how long moving bytes takes at rate bytes per second.
func Duration(bytes uint64, rate float64) time.Duration {
	if rate <= 0 {
		return 0
	}
	return time.Duration(float64(bytes) / rate * float64(time.Second))
}

// Processes lists a pod's simulated processes for the engine (engine.ProcessFinder).
func (m *Machine) Processes(_ context.Context, pod podmap.PodRef) ([]engine.Process, error) {
	var out []engine.Process
	for _, p := range m.ProcessesOf(pod.UID) {
		out = append(out, engine.Process{PID: p.PID, GPU: p.GPU, Bytes: p.Bytes, State: p.State})
	}
	return out, nil
}

var _ engine.ProcessFinder = (*Machine)(nil)
