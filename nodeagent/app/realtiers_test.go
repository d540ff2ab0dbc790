package app

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/tier"
)

func suspendedPod(uid string, gpus bool, restart v1.RestartPolicy) *v1.Pod {
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: uid, UID: types.UID(uid), Annotations: map[string]string{kv1.AnnotationState: string(kv1.PodSuspended)}},
		Spec:       v1.PodSpec{NodeName: "n1", RestartPolicy: restart, Containers: []v1.Container{{Name: "main"}}},
		Status:     v1.PodStatus{Phase: v1.PodRunning},
	}
	if gpus {
		pod.Annotations[kv1.AnnotationGPUs] = "GPU-00000000-0000-0000-0000-000000000001"
	}
	return pod
}

// Suspended pods with GPUs are the policy's only where the node's CUDA driver is usable; pods
// of other nodes, not suspended, or with two containers never are.
func TestSuspendedOn(t *testing.T) {
	two := suspendedPod("two", false, "")
	two.Spec.Containers = append(two.Spec.Containers, v1.Container{Name: "side"})
	running := suspendedPod("running", false, "")
	running.Annotations[kv1.AnnotationState] = string(kv1.PodRunning)
	for _, tc := range []struct {
		pod       *v1.Pod
		node      string
		driver    bool
		spillable bool
	}{
		{suspendedPod("cpu", false, ""), "n1", false, true},
		{suspendedPod("gpu", true, ""), "n1", true, true},
		{suspendedPod("gpu", true, ""), "n1", false, false},
		{suspendedPod("cpu", false, ""), "n2", true, false},
		{two, "n1", true, false},
		{running, "n1", true, false},
	} {
		if got := suspendedOn(tc.pod, tc.node, tc.driver); got != tc.spillable {
			t.Errorf("suspendedOn(%s on %s, driver %v) = %v, want %v", tc.pod.Name, tc.node, tc.driver, got, tc.spillable)
		}
	}
}

// A suspended pod with restartPolicy Never is left in host memory (the kubelet would not create
// its container again for the restore): one Event per pod, again only for a pod seen anew.
func TestKeptInMemoryTellsOncePerPod(t *testing.T) {
	never := suspendedPod("never", true, v1.RestartPolicyNever)
	for _, p := range []*v1.Pod{suspendedPod("always", true, v1.RestartPolicyAlways), suspendedPod("default", true, ""), suspendedPod("onfailure", true, v1.RestartPolicyOnFailure)} {
		if !tier.Recreated(p) {
			t.Errorf("%s: not recreated, want recreated", p.Name)
		}
	}
	if tier.Recreated(never) {
		t.Error("restartPolicy Never: recreated, want not")
	}
	events := record.NewFakeRecorder(10)
	k := &keptInMemory{recorder: events}
	k.tell([]*v1.Pod{never})
	k.tell([]*v1.Pod{never})
	k.tell(nil)
	k.tell([]*v1.Pod{never})
	var got []string
	for len(events.Events) > 0 {
		got = append(got, <-events.Events)
	}
	if len(got) != 2 || !strings.Contains(got[0], tier.EventKeptInHostMemory) || !strings.Contains(got[0], "restartPolicy is Never") {
		t.Errorf("Events %q, want two %s (the pod told once, and once more after it was gone from the list)", got, tier.EventKeptInHostMemory)
	}
}
