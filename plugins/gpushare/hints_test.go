package gpushare

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2/ktesting"
	fwk "k8s.io/kube-scheduler/framework"
	st "k8s.io/kubernetes/pkg/scheduler/testing"
	"k8s.io/utils/ptr"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

func unstructuredOf(t *testing.T, obj runtime.Object) *unstructured.Unstructured {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: m}
}

func TestIsSchedulableAfterGPUNodeChange(t *testing.T) {
	pod := gpuPod("p", 1, "40Gi").Obj()
	busy := gpuNode("n", 80)
	busy.Status.GPUs[0].MemoryUsedBytes = 60 * gi
	idle := gpuNode("n", 80)
	slots2 := gpuNode("n", 80)
	slots2.Spec.SlotsPerGPU = ptr.To[int32](2)

	tests := []struct {
		name     string
		pod      *v1.Pod
		old, new interface{}
		want     fwk.QueueingHint
		wantErr  bool
	}{
		{name: "GPUNode added with a fitting GPU", pod: pod, new: gpuNode("n", 80), want: fwk.Queue},
		{name: "GPUNode added, GPUs too small", pod: pod, new: gpuNode("n", 24), want: fwk.QueueSkip},
		{name: "GPUNode added without GPUs", pod: pod, new: gpuNode("n"), want: fwk.QueueSkip},
		{name: "foreign memory freed", pod: pod, old: busy, new: idle, want: fwk.Queue},
		{name: "foreign memory taken", pod: pod, old: idle, new: busy, want: fwk.QueueSkip},
		{name: "GPU added", pod: pod, old: gpuNode("n", 80), new: gpuNode("n", 80, 80), want: fwk.Queue},
		{name: "more slots per GPU", pod: pod, old: idle, new: slots2, want: fwk.Queue},
		{name: "nothing that matters changed", pod: pod, old: idle, new: gpuNode("n", 80), want: fwk.QueueSkip},
		{name: "unstructured objects from the dynamic informer", pod: pod, old: unstructuredOf(t, busy), new: unstructuredOf(t, idle), want: fwk.Queue},
		{name: "pod with a malformed annotation is never helped", pod: gpuPod("p", 1, "x").Obj(), new: gpuNode("n", 80), want: fwk.QueueSkip},
		{name: "unexpected object", pod: pod, new: &v1.Node{}, want: fwk.Queue, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logger, _ := ktesting.NewTestContext(t)
			got, err := isSchedulableAfterGPUNodeChange(logger, tt.pod, tt.old, tt.new)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("hint = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestIsSchedulableAfterPodDeleted(t *testing.T) {
	pod := gpuPod("p", 1, "").Obj()
	tests := []struct {
		name    string
		deleted interface{}
		want    fwk.QueueingHint
		wantErr bool
	}{
		{name: "pod holding GPUs", deleted: on(gpuPod("a", 1, ""), "n", 0), want: fwk.Queue},
		{name: "pod without GPUs", deleted: st.MakePod().Name("a").Node("n").Obj(), want: fwk.QueueSkip},
		{name: "unbound pod", deleted: gpuPod("a", 1, "").Obj(), want: fwk.QueueSkip},
		{name: "not a pod", deleted: &v1.Node{}, want: fwk.Queue, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logger, _ := ktesting.NewTestContext(t)
			got, err := isSchedulableAfterPodDeleted(logger, pod, tt.deleted, nil)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("hint = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestIsWaitableAfterPodAdded(t *testing.T) {
	pod := gpuPod("p", 1, "40Gi").Priority(5).Obj()
	tests := []struct {
		name    string
		added   interface{}
		want    fwk.QueueingHint
		wantErr bool
	}{
		{name: "equal priority, bound with GPUs", added: on(gpuPod("a", 1, "").Priority(5), "n", 0), want: fwk.Queue},
		{name: "other priority", added: on(gpuPod("a", 1, "").Priority(6), "n", 0), want: fwk.QueueSkip},
		{name: "no GPUs", added: st.MakePod().Name("a").Priority(5).Node("n").Obj(), want: fwk.QueueSkip},
		{name: "not bound", added: gpuPod("a", 1, "").Priority(5).Obj(), want: fwk.QueueSkip},
		{name: "not a pod", added: &v1.Node{}, want: fwk.Queue, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logger, _ := ktesting.NewTestContext(t)
			got, err := isWaitableAfterPodAdded(logger, pod, nil, tt.added)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("hint = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestIsSchedulableAfterPodUpdated(t *testing.T) {
	pod := gpuPod("p", 1, "40Gi").Obj()
	running := on(gpuPod("a", 1, ""), "n", 0)
	suspending := running.DeepCopy()
	suspending.Annotations[kv1.AnnotationState] = string(kv1.PodSuspending)
	suspended := running.DeepCopy()
	suspended.Annotations[kv1.AnnotationState] = string(kv1.PodSuspended)
	moved := running.DeepCopy()
	moved.Annotations[kv1.AnnotationGPUs] = gpuID("n", 1)
	relabelled := running.DeepCopy()
	relabelled.Labels = map[string]string{"x": "y"}
	finished := running.DeepCopy()
	finished.Status.Phase = v1.PodSucceeded

	smaller := pod.DeepCopy()
	smaller.Annotations[kv1.AnnotationGPUMemory] = "20Gi"
	labelled := pod.DeepCopy()
	labelled.Labels = map[string]string{"x": "y"}

	tests := []struct {
		name     string
		old, new interface{}
		want     fwk.QueueingHint
		wantErr  bool
	}{
		{name: "other pod suspended", old: suspending, new: suspended, want: fwk.Queue},
		{name: "other pod starts suspending (VRAM not free yet)", old: running, new: suspending, want: fwk.QueueSkip},
		{name: "other pod moved to another GPU", old: running, new: moved, want: fwk.Queue},
		{name: "other pod relabelled", old: running, new: relabelled, want: fwk.QueueSkip},
		{name: "other pod resumed", old: suspended, new: running, want: fwk.QueueSkip},
		{name: "other pod with GPUs ended", old: running, new: finished, want: fwk.Queue},
		{name: "other pod without GPUs", old: st.MakePod().Name("b").Obj(), new: st.MakePod().Name("b").Obj(), want: fwk.QueueSkip},
		{name: "the pod asks for less memory", old: pod, new: smaller, want: fwk.Queue},
		{name: "the pod relabelled", old: pod, new: labelled, want: fwk.QueueSkip},
		{name: "not pods", old: &v1.Node{}, new: &v1.Node{}, want: fwk.Queue, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logger, _ := ktesting.NewTestContext(t)
			got, err := isSchedulableAfterPodUpdated(logger, pod, tt.old, tt.new)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("hint = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestIsSchedulableAfterGPUCheckpointChange(t *testing.T) {
	pod := gpuPod("p", 1, "40Gi").UID("p-uid").Obj()
	ck := func(action kv1.CheckpointAction, phase kv1.CheckpointPhase, preemptor string) *kv1.GPUCheckpoint {
		c := &kv1.GPUCheckpoint{Spec: kv1.GPUCheckpointSpec{PodName: "v", Action: action}, Status: kv1.GPUCheckpointStatus{Phase: phase}}
		if preemptor != "" {
			c.Spec.Preemptor = &kv1.PodReference{Name: "x", UID: preemptor}
		}
		return c
	}
	tests := []struct {
		name     string
		old, new interface{}
		want     fwk.QueueingHint
		wantErr  bool
	}{
		{name: "suspension for the pod succeeded", old: ck(kv1.ActionSuspend, kv1.PhaseInProgress, "p-uid"), new: ck(kv1.ActionSuspend, kv1.PhaseSucceeded, "p-uid"), want: fwk.Queue},
		{name: "suspension for the pod failed", old: ck(kv1.ActionSuspend, kv1.PhaseInProgress, "p-uid"), new: ck(kv1.ActionSuspend, kv1.PhaseFailed, "p-uid"), want: fwk.Queue},
		{name: "another pod's suspension freed VRAM", old: ck(kv1.ActionSuspend, kv1.PhaseInProgress, "other"), new: ck(kv1.ActionSuspend, kv1.PhaseSucceeded, "other"), want: fwk.Queue},
		{name: "another pod's suspension failed", old: ck(kv1.ActionSuspend, kv1.PhaseInProgress, "other"), new: ck(kv1.ActionSuspend, kv1.PhaseFailed, "other"), want: fwk.QueueSkip},
		{name: "a resume takes VRAM", old: ck(kv1.ActionResume, kv1.PhaseInProgress, ""), new: ck(kv1.ActionResume, kv1.PhaseSucceeded, ""), want: fwk.QueueSkip},
		{name: "still in progress", old: ck(kv1.ActionSuspend, kv1.PhasePending, "p-uid"), new: ck(kv1.ActionSuspend, kv1.PhaseInProgress, "p-uid"), want: fwk.QueueSkip},
		{name: "already ended before", old: ck(kv1.ActionSuspend, kv1.PhaseSucceeded, "p-uid"), new: ck(kv1.ActionSuspend, kv1.PhaseSucceeded, "p-uid"), want: fwk.QueueSkip},
		{name: "created", new: ck(kv1.ActionSuspend, "", "p-uid"), want: fwk.QueueSkip},
		{name: "unstructured", old: unstructuredOf(t, ck(kv1.ActionSuspend, kv1.PhaseInProgress, "p-uid")), new: unstructuredOf(t, ck(kv1.ActionSuspend, kv1.PhaseFailed, "p-uid")), want: fwk.Queue},
		{name: "not a GPUCheckpoint", new: &v1.Node{}, want: fwk.Queue, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logger, _ := ktesting.NewTestContext(t)
			got, err := isSchedulableAfterGPUCheckpointChange(logger, pod, tt.old, tt.new)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("hint = %v, want %v", got, tt.want)
			}
		})
	}
}
