package scaletozero

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/nodeagent/storage"
	"github.com/kybernate/kybernate/nodeagent/tier"
	"github.com/kybernate/kybernate/test/integration/framework"
)

// A pod with kybernate.io/sleep: Disk is suspended for idleness and then spilled to the
// agent's disk tier at once, far under the host-memory mark (status.storage and an Event say
// so, its host memory is free); a request is held, wakes it through the resume controller, the
// agent restores it from the disk tier (restore guard first), and the request is answered
// once, by the pod on its GPU.
func TestSleepDiskSpilledThenWoken(t *testing.T) {
	e := setup(t)
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.Client.CoreV1().Secrets(e.ns).Create(t.Context(), &v1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "kybernate-image-key"},
		Data: map[string][]byte{storage.SecretKeyField: key}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.deploy(t, "2s", map[string]string{kv1.AnnotationSleep: "Disk"})
	if a := e.send(t.Context(), 0); a.err != nil || a.status != 200 || a.body != "answer 0" {
		t.Fatalf("request to the awake pod: %+v", a)
	}
	e.waitAsleep(t)
	idle := func() *kv1.GPUCheckpoint {
		for _, ck := range e.h.LatestCheckpoints() {
			if ck.Spec.Action == kv1.ActionSuspend && ck.Spec.Reason == kv1.ReasonIdle {
				return ck
			}
		}
		return nil
	}
	e.h.Wait(t, 30*time.Second, "status.storage of the Idle suspension says Disk", func() bool {
		ck := idle()
		return ck != nil && ck.Status.Storage != nil && ck.Status.Storage.Tier == kv1.TierDisk
	})
	st := idle().Status.Storage
	if st.SizeBytes <= 0 || st.StoredBytes <= st.SizeBytes || st.KeyID == "" || !strings.Contains(st.Location, "images") {
		t.Errorf("status.storage %+v, want an encrypted image in the disk tier with its key id", st)
	}
	e.waitEvent(t, "llm", tier.EventSpilledToDisk)
	node := e.h.Pod("llm").Spec.NodeName
	framework.WaitFor(t.Context(), t, 30*time.Second, "the GPUNode lists the pod on disk", func(ctx context.Context) (bool, error) {
		gn, err := e.kc.KybernateV1alpha1().GPUNodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, u := range gn.Status.SuspendedPods {
			if u.Namespace == e.ns && u.Name == "llm" && u.Residency == kv1.OnDisk {
				return true, nil
			}
		}
		return false, nil
	})
	if got := e.a.model.seen(e.ns); len(got) != 1 {
		t.Fatalf("the pod got %v before the wake, want request 0 only", got)
	}

	if a := e.send(t.Context(), 1); a.err != nil || a.status != 200 || a.body != "answer 1" {
		t.Fatalf("held request to the pod asleep on disk: %+v", a)
	}
	count := map[string]int{}
	for _, a := range e.a.model.seen(e.ns) {
		count[a.seq]++
		if a.state != kv1.PodRunning {
			t.Errorf("request %s reached the pod while it was %s", a.seq, a.state)
		}
	}
	for i := range 2 {
		if count[fmt.Sprint(i)] != 1 {
			t.Errorf("the pod got request %d %d times, want once", i, count[fmt.Sprint(i)])
		}
	}
	// The pod runs once the agent marked it Running; the Resume's own status comes after.
	var resumed *kv1.GPUCheckpoint
	e.h.Wait(t, 30*time.Second, "the Resume that woke the pod succeeded", func() bool {
		for _, ck := range e.h.LatestCheckpoints() {
			if ck.Spec.Action == kv1.ActionResume && ck.Status.Phase == kv1.PhaseSucceeded {
				resumed = ck
				return true
			}
		}
		return false
	})
	if resumed.Status.Storage == nil || resumed.Status.Storage.Tier != kv1.TierDisk {
		t.Errorf("the Resume that woke the pod: %+v, want it to come from the disk tier", resumed)
	}
	e.waitEvent(t, "llm", tier.EventRestoredFromTier)
	e.waitEvent(t, "llm", "Woken")
	if got := gpupod.StateOf(e.h.Pod("llm")); got != kv1.PodRunning {
		t.Errorf("after the wake the pod is %s", got)
	}
	// The wake asked for nothing that failed on the way (the spill came before the request:
	// the test waited for it).
	for _, r := range e.events(t, "llm") {
		switch r {
		case tier.EventTierMoveFailed, "ResumeFailed", "WakeFailed":
			t.Errorf("Event %s on the pod", r)
		}
	}
}
