package tier

import (
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"

	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/podmap"
	"github.com/kybernate/kybernate/nodeagent/sim"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

// restart is a new agent: a new simulated machine that recreated the suspended pod's processes
// parked from its state (as the simulation does), a new engine and a new Manager over the same
// tiers, which recovers.
func (f *fixture) restart() {
	f.t.Helper()
	m, err := sim.NewMachine(node, "NVIDIA-H100-80GB-HBM3", 1, f.clk)
	if err != nil {
		f.t.Fatal(err)
	}
	m.SetHostMemory(100 * gib)
	if _, errs := m.SyncPods([]*v1.Pod{f.pod}); len(errs) > 0 || len(m.ProcessesOf(f.pod.UID)) != 1 {
		f.t.Fatalf("the restarted simulation did not recreate the parked pod: %v", errs)
	}
	e := engine.New(m.Driver(), m, m, m, m, engine.Config{LockTimeout: time.Second, StepTimeout: time.Minute, RestoreRetries: 1}, f.clk)
	ck, err := f.kyb.KybernateV1alpha1().GPUCheckpoints("ml").Get(f.t.Context(), "train-suspend", metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	if err := f.ckIdx.Update(ck); err != nil {
		f.t.Fatal(err)
	}
	n := Node{Engine: e, Images: &sim.Images{Machine: m, Engine: e, Clock: f.clk}, End: m.End, Memory: m.HostMemory}
	f.mgr = New(f.mgr.cfg, singleNode{n}, f.mgr.disk, f.objects, f.mgr.keys, f.kube, f.kyb,
		corelisters.NewPodLister(f.podIdx), listers.NewGPUCheckpointLister(f.ckIdx), f.events, f.clk)
	f.machine, f.engine = m, e
	f.mgr.Recover(f.t.Context())
}

func TestRecoverAfterRestart(t *testing.T) {
	f := newFixture(t, "5Gi")
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierDisk {
		t.Fatalf("pod in %s, want Disk", got)
	}
	f.restart()
	if got := f.tierOf(); got != kv1.TierDisk {
		t.Fatalf("after the restart the pod is in %s, want Disk", got)
	}
	if procs := f.machine.ProcessesOf(f.pod.UID); len(procs) != 0 {
		t.Errorf("the recreated processes of the spilled pod were not ended: %v", procs)
	}
	// The upload an earlier agent would have made is made by this one.
	f.clk.Step(10 * time.Minute)
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierObjectStore {
		t.Fatalf("pod in %s, want ObjectStore", got)
	}
	if _, err := f.mgr.Restore(t.Context(), node, f.pod, nil); err != nil {
		t.Fatal(err)
	}
	// The progress came from the image: the restarted simulation had none for the pod.
	if got := f.machine.Progress()[podmap.PodRef{Namespace: "ml", Name: "train", UID: "uid-train"}]; got != 7*time.Second {
		t.Errorf("progress after the restore %v, want the image's 7s", got)
	}
}

func TestRecoverWithoutImageStaysInHostMemory(t *testing.T) {
	f := newFixture(t, "5Gi")
	f.mgr.Reconcile(t.Context())
	if err := storage.Delete(t.Context(), f.mgr.disk, storage.ImageID{Namespace: "ml", Name: "train-uid-train"}); err != nil {
		t.Fatal(err)
	}
	f.restart()
	if got := f.tierOf(); got != kv1.TierHostMemory {
		t.Fatalf("pod in %s without its image, want HostMemory", got)
	}
	if procs := f.machine.ProcessesOf(f.pod.UID); len(procs) != 1 {
		t.Errorf("processes %v, want the parked one kept", procs)
	}
	if st := f.storageStatus(); st != nil {
		t.Errorf("status.storage %+v, want cleared", st)
	}
	if ev := f.event(EventTierMoveFailed); !strings.Contains(ev, "stays in host memory") {
		t.Errorf("Event %q", ev)
	}
}
