package tier

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"
	testingclock "k8s.io/utils/clock/testing"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/checkpoint"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/podmap"
	"github.com/kybernate/kybernate/nodeagent/sim"
)

// realGPUFixture is a real node's pod with GPUs: a simulated machine (SIMULATED CUDA driver)
// of two GPUs runs its process on the first, the engine holds it suspended with 10Gi parked,
// and the fake containerd's container carries its kybernate.io/gpus.
type realGPUFixture struct {
	*realFixture
	machine *sim.Machine
	engine  *engine.Engine
	gpus    []cuda.UUID
	// models is what the node's Model says of its GPUs (NVML on a real node).
	models map[string]string
}

func newRealGPUFixture(t *testing.T) *realGPUFixture {
	t.Helper()
	// The machine and the engine have a clock of their own: the engine's driver calls leave
	// timers behind, and the tests wait for the policy's.
	m, e := simEngine(t, 2, testingclock.NewFakeClock(epoch))
	g := &realGPUFixture{machine: m, engine: e, gpus: m.GPUs(), models: map[string]string{}}
	for _, u := range g.gpus {
		g.models[u.String()] = "NVIDIA H200 (simulated)"
	}
	g.realFixture = newRealFixtureWith(t, testingclock.NewFakeClock(epoch), func(cf *containersFixture, pod *v1.Pod, n *Node) {
		pod.Annotations[kv1.AnnotationGPUs] = g.gpus[0].String()
		pod.Annotations[kv1.AnnotationGPUMemory] = "10Gi"
		running := pod.DeepCopy()
		running.Annotations[kv1.AnnotationState] = string(kv1.PodRunning)
		if _, errs := m.SyncPods([]*v1.Pod{running}); len(errs) > 0 {
			t.Fatal(errs)
		}
		if _, err := e.Suspend(t.Context(), podmap.PodRef{Namespace: "ml", Name: "train", UID: "uid-train"}, 0); err != nil {
			t.Fatal(err)
		}
		cf.rt.gpus = g.gpus[0].String()
		cf.c.Checkpointer = checkpoint.New(checkpoint.Config{Node: node}, cf.rt, e, nil, clock.RealClock{})
		n.Engine = e
		n.Model = func(_ context.Context, uuid string) string { return g.models[uuid] }
	})
	return g
}

// refusedResume is a Resume onto to that the guard must refuse before the gate opens; one
// that opens it would wait for a create that never comes, so it fails after 10 s.
func (f *realGPUFixture) refusedResume(to cuda.UUID) error {
	f.t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := f.mgr.Restore(f.t.Context(), node, f.pod, []cuda.UUID{to})
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		f.t.Fatalf("the Resume onto %s was not refused: it waits for the kubelet's create", to)
		return nil
	}
}

// The policy spills a suspended pod with GPUs on a real node: its container is checkpointed
// with its GPU memory parked in host memory (not suspended again: no GPU steps), stopped, and
// the engine no longer holds its parked processes. A Resume onto another GPU than its
// kybernate.io/gpus, or onto a GPU without room for what its processes had in use, is refused
// before the gate opens: the kubelet's creates stay refused and nothing of the image is
// touched. With room, the create restores it and the Resume reports its GPU memory.
func TestRealNodeSpillsPodWithGPUs(t *testing.T) {
	f := newRealGPUFixture(t)
	uid := f.pod.UID
	if _, ok := f.engine.Parked(uid); !ok {
		t.Fatal("fixture: the engine does not hold the pod suspended")
	}
	f.spill()
	if diff := cmp.Diff([]string{"Pause", "Dump", "Stop"}, f.rt.calls); diff != "" {
		t.Errorf("container calls (-want +got):\n%s", diff)
	}
	if _, ok := f.engine.Parked(uid); ok {
		t.Error("the engine still holds parked processes of the spilled pod")
	}
	ev := f.event(EventSpilledToDisk)
	if want := "10Gi of parked GPU memory from GPUs " + f.gpus[0].String(); !strings.Contains(ev, want) {
		t.Errorf("Event %q does not say %q", ev, want)
	}

	err := f.refusedResume(f.gpus[1])
	if engine.CauseOf(err) != engine.CauseInvalidTarget || !strings.Contains(err.Error(), f.gpus[0].String()) {
		t.Errorf("resume onto the other GPU: %v, want %s naming the pod's own GPU", err, engine.CauseInvalidTarget)
	}
	if err := f.machine.SetForeignMemory(map[int]uint64{0: 75 << 30}); err != nil {
		t.Fatal(err)
	}
	err = f.refusedResume(f.gpus[0])
	if engine.CauseOf(err) != engine.CauseInsufficientGPUMemory {
		t.Errorf("resume onto a full GPU: %v, want %s", err, engine.CauseInsufficientGPUMemory)
	}
	if tier, held := f.mgr.Holds(uid); !held || tier != kv1.TierDisk {
		t.Fatalf("after the refused resumes the pod is held in %q (%v), want Disk", tier, held)
	}
	if ok, err := storageExists(t, f.c); !ok || err != nil {
		t.Fatalf("the image is gone after the refused resumes (%v)", err)
	}
	refused := f.fetch()
	f.waitForTimers()
	f.clk.Step(createHold)
	if r := <-refused; ContainerCauseOf(r.err) != ContainerNotYet {
		t.Fatalf("create after the refused resumes: %+v, %v; want it refused (%s)", r.out, r.err, ContainerNotYet)
	}

	if err := f.machine.SetForeignMemory(nil); err != nil {
		t.Fatal(err)
	}
	res := f.fetch()
	f.waitForTimers()
	type restored struct {
		res engine.Result
		err error
	}
	resumed := make(chan restored, 1)
	go func() {
		r, err := f.mgr.Restore(t.Context(), node, f.pod, []cuda.UUID{f.gpus[0]})
		resumed <- restored{r, err}
	}()
	r := <-res
	if r.err != nil || r.out.Dir == "" {
		t.Fatalf("create after the resume: %+v, %v; want the image to restore from", r.out, r.err)
	}
	if err := f.c.Release(t.Context(), trainer, r.out.Dir, true); err != nil {
		t.Fatal(err)
	}
	got := <-resumed
	if got.err != nil {
		t.Fatal(got.err)
	}
	if got.res.Bytes != 10*gib || !cmp.Equal(got.res.GPUs, []cuda.UUID{f.gpus[0]}) {
		t.Errorf("resume moved %d bytes onto %v, want 10Gi onto %v", got.res.Bytes, got.res.GPUs, f.gpus[0])
	}
}
