package tier

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// putToSleep makes the fixture's suspension one for idleness (reason Idle, created at epoch)
// and gives the pod the annotations, as the activator and the user leave them.
func (f *fixture) putToSleep(reason kv1.CheckpointReason, annotations map[string]string) {
	f.t.Helper()
	ck, err := f.kyb.KybernateV1alpha1().GPUCheckpoints("ml").Get(f.t.Context(), "train-suspend", metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	ck.Spec.Reason = reason
	ck.CreationTimestamp = metav1.NewTime(epoch)
	if ck, err = f.kyb.KybernateV1alpha1().GPUCheckpoints("ml").Update(f.t.Context(), ck, metav1.UpdateOptions{}); err != nil {
		f.t.Fatal(err)
	}
	pod := f.pod.DeepCopy()
	for k, v := range annotations {
		pod.Annotations[k] = v
	}
	if err := f.ckIdx.Update(ck); err != nil {
		f.t.Fatal(err)
	}
	if err := f.podIdx.Update(pod); err != nil {
		f.t.Fatal(err)
	}
	f.pod = pod
}

// countEvents counts the recorded Events with reason, draining the recorder.
func (f *fixture) countEvents(reason string) int {
	n := 0
	for {
		select {
		case ev := <-f.events.Events:
			if strings.Contains(ev, " "+reason+" ") {
				n++
			}
		default:
			return n
		}
	}
}

// A pod put to sleep for idleness with kybernate.io/sleep Disk is spilled at the next pass
// although host memory is far under the mark, and comes back from the disk tier.
func TestSleepDiskSpillsUnderTheMark(t *testing.T) {
	f := newFixture(t, "50Gi") // 10Gi parked
	f.putToSleep(kv1.ReasonIdle, map[string]string{kv1.AnnotationSleep: "Disk"})
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierDisk {
		t.Fatalf("a pod that sleeps on disk is in %s, want Disk", got)
	}
	if avail, _ := f.machine.MemAvailable(); avail != 100*gib {
		t.Errorf("host memory available %d after the spill, want all 100Gi", avail)
	}
	if ev := f.event(EventSpilledToDisk); !strings.Contains(ev, "10Gi") {
		t.Errorf("Event %q does not name the bytes", ev)
	}
	if st := f.storageStatus(); st == nil || st.Tier != kv1.TierDisk {
		t.Fatalf("status.storage %+v, want the disk tier", st)
	}
	// Disk is the depth asked for: the image moves on to object storage only after
	// --disk-tier-idle, as every image on disk does.
	f.clk.Step(time.Minute)
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierDisk {
		t.Fatalf("pod in %s a minute later, want Disk until --disk-tier-idle", got)
	}
	res, err := f.mgr.Restore(t.Context(), node, f.pod, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Storage == nil || res.Storage.Tier != kv1.TierDisk || res.Bytes != 10*gib {
		t.Errorf("result %+v, want 10Gi back from the disk tier", res)
	}
	if _, ok := f.mgr.Holds(f.pod.UID); ok {
		t.Error("the manager still holds the woken pod")
	}
}

// Only a deep sleep goes to disk under the mark: the same pod sleeping in host memory, or
// suspended for another reason, or asked to wake already, stays.
func TestSleepShallowOrOtherReasonStays(t *testing.T) {
	wake := gpupod.FormatWakeRequested(epoch.Add(time.Second))
	for _, tc := range []struct {
		name        string
		reason      kv1.CheckpointReason
		annotations map[string]string
	}{
		{name: "HostMemory", reason: kv1.ReasonIdle, annotations: map[string]string{kv1.AnnotationSleep: "HostMemory"}},
		{name: "no sleep annotation", reason: kv1.ReasonIdle},
		{name: "an invalid sleep annotation", reason: kv1.ReasonIdle, annotations: map[string]string{kv1.AnnotationSleep: "Tape"}},
		{name: "Disk but a preemption", reason: kv1.ReasonPreemption, annotations: map[string]string{kv1.AnnotationSleep: "Disk"}},
		{name: "Disk but a wake is asked for", reason: kv1.ReasonIdle,
			annotations: map[string]string{kv1.AnnotationSleep: "Disk", kv1.AnnotationWakeRequested: wake}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "50Gi")
			f.putToSleep(tc.reason, tc.annotations)
			f.mgr.Reconcile(t.Context())
			if got := f.tierOf(); got != kv1.TierHostMemory {
				t.Fatalf("pod in %s, want HostMemory", got)
			}
			if n := f.countEvents(EventSpilledToDisk); n != 0 {
				t.Errorf("%d SpilledToDisk Events", n)
			}
		})
	}
}

// A spill for a deep sleep that fails (no key) leaves the pod asleep in host memory and is
// tried again only after the backoff, then succeeds once the key is there.
func TestSleepDiskSpillFailureBacksOff(t *testing.T) {
	f := newFixture(t, "50Gi")
	keys := f.mgr.keys
	f.mgr.keys = SecretKeys{Client: kubefake.NewSimpleClientset(), Name: "kybernate-image-key"}
	f.putToSleep(kv1.ReasonIdle, map[string]string{kv1.AnnotationSleep: "Disk"})
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierHostMemory {
		t.Fatalf("pod in %s without a key, want HostMemory", got)
	}
	if n := f.countEvents(EventTierMoveFailed); n != 1 {
		t.Fatalf("%d TierMoveFailed Events after the first try, want 1", n)
	}
	f.clk.Step(f.mgr.cfg.RetryBackoff - time.Second)
	f.mgr.Reconcile(t.Context())
	if n := f.countEvents(EventTierMoveFailed); n != 0 {
		t.Errorf("%d more tries within the backoff, want none", n)
	}
	f.mgr.keys = keys
	f.clk.Step(time.Second)
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierDisk {
		t.Fatalf("pod in %s after the backoff with the key there, want Disk", got)
	}
	f.mgr.mu.Lock()
	defer f.mgr.mu.Unlock()
	if len(f.mgr.failedSleeps) != 0 {
		t.Errorf("failed spills %v are remembered after the spill", f.mgr.failedSleeps)
	}
}

// The handler pokes the policy once when a suspension for idleness succeeds, and not for
// other suspensions or updates of one that had succeeded already.
func TestCheckpointHandlerPokes(t *testing.T) {
	f := newFixture(t, "50Gi")
	h := f.mgr.CheckpointHandler()
	ck := func(reason kv1.CheckpointReason, phase kv1.CheckpointPhase) *kv1.GPUCheckpoint {
		return &kv1.GPUCheckpoint{Spec: kv1.GPUCheckpointSpec{Action: kv1.ActionSuspend, Reason: reason}, Status: kv1.GPUCheckpointStatus{Phase: phase}}
	}
	poked := func() bool {
		select {
		case <-f.mgr.poke:
			return true
		default:
			return false
		}
	}
	h.OnUpdate(ck(kv1.ReasonIdle, kv1.PhaseInProgress), ck(kv1.ReasonIdle, kv1.PhaseSucceeded))
	if !poked() {
		t.Error("an Idle suspension that succeeded did not poke")
	}
	h.OnUpdate(ck(kv1.ReasonIdle, kv1.PhaseSucceeded), ck(kv1.ReasonIdle, kv1.PhaseSucceeded))
	h.OnUpdate(ck(kv1.ReasonPreemption, kv1.PhaseInProgress), ck(kv1.ReasonPreemption, kv1.PhaseSucceeded))
	h.OnUpdate(ck(kv1.ReasonIdle, kv1.PhasePending), ck(kv1.ReasonIdle, kv1.PhaseFailed))
	if poked() {
		t.Error("poked for an update that puts no pod to sleep")
	}
	h.OnAdd(ck(kv1.ReasonIdle, kv1.PhaseSucceeded), true) // seen at start
	f.mgr.Poke()                                          // a second poke while one waits does not block
	if !poked() || poked() {
		t.Error("want exactly one pass asked for")
	}
}
