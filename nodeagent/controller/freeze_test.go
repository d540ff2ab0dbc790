package controller

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	testingclock "k8s.io/utils/clock/testing"

	kybfake "github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned/fake"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/engine"
)

const cpuNode = "node-cpu"

// fakeFreezer records what it froze and thawed; err fails the next call.
type fakeFreezer struct {
	calls []string
	err   error
}

func (f *fakeFreezer) Freeze(_ context.Context, pod *v1.Pod) error {
	f.calls = append(f.calls, "freeze "+pod.Name)
	return f.err
}

func (f *fakeFreezer) Thaw(_ context.Context, pod *v1.Pod) error {
	f.calls = append(f.calls, "thaw "+pod.Name)
	return f.err
}

type freezeHarness struct {
	c        *Controller
	kube     *kubefake.Clientset
	kyb      *kybfake.Clientset
	f        *fakeFreezer
	recorder *record.FakeRecorder
	ckIndex  cache.Indexer
	podIndex cache.Indexer
}

// newFreezeHarness serves cpuNode, which has no GPU engine, only a freezer.
func newFreezeHarness(t *testing.T, pods ...*v1.Pod) *freezeHarness {
	t.Helper()
	h := &freezeHarness{kube: kubefake.NewClientset(), kyb: kybfake.NewSimpleClientset(), f: &fakeFreezer{}, recorder: record.NewFakeRecorder(100)}
	podIndex := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	h.podIndex = podIndex
	h.ckIndex = cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, p := range pods {
		if _, err := h.kube.CoreV1().Pods(p.Namespace).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		_ = podIndex.Add(p)
	}
	clk := testingclock.NewFakeClock(time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC))
	op := NewOperator(h.kube, EngineMap{}, h.recorder, clk, nil)
	op.SetFreezers(FreezerMap{cpuNode: h.f})
	h.c = New(Config{}, h.kube, h.kyb, listers.NewGPUCheckpointLister(h.ckIndex), corelisters.NewPodLister(podIndex), op, clk)
	return h
}

// run creates ck and reconciles it; it returns ck as the agent left it.
func (h *freezeHarness) run(t *testing.T, ck *kv1.GPUCheckpoint) *kv1.GPUCheckpoint {
	t.Helper()
	if _, err := h.kyb.KybernateV1alpha1().GPUCheckpoints(ck.Namespace).Create(t.Context(), ck, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_ = h.ckIndex.Add(ck)
	// The agent's pod cache follows the API server, as its informer does.
	pods, err := h.kube.CoreV1().Pods("ml").List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		_ = h.podIndex.Update(&pods.Items[i])
	}
	if err := h.c.Reconcile(t.Context(), ck.Namespace+"/"+ck.Name); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	got, err := h.kyb.KybernateV1alpha1().GPUCheckpoints(ck.Namespace).Get(t.Context(), ck.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func (h *freezeHarness) state(t *testing.T, name string) string {
	t.Helper()
	p, err := h.kube.CoreV1().Pods("ml").Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p.Annotations[kv1.AnnotationState]
}

func (h *freezeHarness) events() []string {
	var out []string
	for {
		select {
		case e := <-h.recorder.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func cpuPod(name, nodeName string, annotations map[string]string) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: name, UID: types.UID("uid-" + name), Annotations: annotations},
		Spec:       v1.PodSpec{NodeName: nodeName, Containers: []v1.Container{{Name: "server"}}},
		Status:     v1.PodStatus{Phase: v1.PodRunning},
	}
}

// A pod without GPUs on a node without a GPU engine sleeps by having its containers frozen and
// wakes by having them thawed: Suspended, then Running, with an Event for each.
func TestPodWithoutGPUsFrozenAndThawed(t *testing.T) {
	h := newFreezeHarness(t, cpuPod("llm", cpuNode, map[string]string{}))
	sleep := checkpoint("llm-idle-1", "llm", kv1.ActionSuspend)
	sleep.Spec.Reason = kv1.ReasonIdle
	if ck := h.run(t, sleep); ck.Status.Phase != kv1.PhaseSucceeded || ck.Status.NodeName != cpuNode {
		t.Fatalf("suspend %s on %q (%s), want Succeeded on %s", ck.Status.Phase, ck.Status.NodeName, ck.Status.Message, cpuNode)
	}
	if s := h.state(t, "llm"); s != string(kv1.PodSuspended) {
		t.Errorf("pod state %q after the suspend, want Suspended", s)
	}
	if ck := h.run(t, checkpoint("llm-resume-1", "llm", kv1.ActionResume)); ck.Status.Phase != kv1.PhaseSucceeded {
		t.Fatalf("resume %s (%s), want Succeeded", ck.Status.Phase, ck.Status.Message)
	}
	if s := h.state(t, "llm"); s != string(kv1.PodRunning) {
		t.Errorf("pod state %q after the resume, want Running", s)
	}
	if want := []string{"freeze llm", "thaw llm"}; strings.Join(h.f.calls, ",") != strings.Join(want, ",") {
		t.Errorf("freezer calls %q, want %q", h.f.calls, want)
	}
	ev := strings.Join(h.events(), "\n")
	for _, want := range []string{"Normal Suspended Suspended: the pod has no GPUs; froze its 1 containers", "Normal Resumed Resumed: thawed"} {
		if !strings.Contains(ev, want) {
			t.Errorf("Events:\n%s\nwant one containing %q", ev, want)
		}
	}
}

// A freeze that fails leaves the pod Running and fails the GPUCheckpoint with the cause; a
// failed thaw leaves it Suspended.
func TestFreezeAndThawFailures(t *testing.T) {
	h := newFreezeHarness(t, cpuPod("llm", cpuNode, map[string]string{}))
	h.f.err = errors.New("cgroup freezer: device or resource busy")
	ck := h.run(t, checkpoint("s1", "llm", kv1.ActionSuspend))
	if ck.Status.Phase != kv1.PhaseFailed || reasonOf(ck) != CauseFreezeFailed || !strings.Contains(ck.Status.Message, "resource busy") {
		t.Errorf("suspend %s %s (%s), want Failed %s with the freezer's error", ck.Status.Phase, reasonOf(ck), ck.Status.Message, CauseFreezeFailed)
	}
	if s := h.state(t, "llm"); s != string(kv1.PodRunning) {
		t.Errorf("pod state %q after a failed freeze, want Running", s)
	}
	if ev := strings.Join(h.events(), "\n"); !strings.Contains(ev, "Warning SuspendFailed") {
		t.Errorf("Events:\n%s\nwant a Warning SuspendFailed", ev)
	}

	h.f.err = nil
	if ck := h.run(t, checkpoint("s2", "llm", kv1.ActionSuspend)); ck.Status.Phase != kv1.PhaseSucceeded {
		t.Fatalf("suspend %s (%s), want Succeeded", ck.Status.Phase, ck.Status.Message)
	}
	h.f.err = errors.New("thaw failed")
	if ck := h.run(t, checkpoint("r1", "llm", kv1.ActionResume)); ck.Status.Phase != kv1.PhaseFailed || reasonOf(ck) != CauseThawFailed {
		t.Errorf("resume %s %s (%s), want Failed %s", ck.Status.Phase, reasonOf(ck), ck.Status.Message, CauseThawFailed)
	}
	if s := h.state(t, "llm"); s != string(kv1.PodSuspended) {
		t.Errorf("pod state %q after a failed thaw, want Suspended", s)
	}
	if ck := h.run(t, checkpoint("r2", "llm", kv1.ActionResume, gpu0)); ck.Status.Phase != kv1.PhaseFailed || reasonOf(ck) != ReasonInvalid {
		t.Errorf("resume onto a GPU %s %s (%s), want Failed %s", ck.Status.Phase, reasonOf(ck), ck.Status.Message, ReasonInvalid)
	}
}

// A GPU pod on a node where the agent has only a freezer is not this agent's: nothing is
// frozen and the GPUCheckpoint is left to an agent with the node's GPU engine.
func TestGPUPodNotFrozen(t *testing.T) {
	h := newFreezeHarness(t, gpuPod("train", cpuNode, gpu0))
	if ck := h.run(t, checkpoint("s", "train", kv1.ActionSuspend)); ck.Status.Phase != "" {
		t.Errorf("suspend %s (%s), want it left alone", ck.Status.Phase, ck.Status.Message)
	}
	if len(h.f.calls) != 0 {
		t.Errorf("freezer calls %q, want none", h.f.calls)
	}
}

// reasonOf is the reason of a failed GPUCheckpoint's Complete condition.
func reasonOf(ck *kv1.GPUCheckpoint) string {
	if c := meta.FindStatusCondition(ck.Status.Conditions, kv1.CheckpointComplete); c != nil {
		return c.Reason
	}
	return ""
}

// fakeTiers holds pods spilled to Disk; Restore brings them back or fails with err.
type fakeTiers struct {
	held     map[types.UID]bool
	err      error
	restored []string
}

func (f *fakeTiers) Holds(uid types.UID) (kv1.StorageTier, bool) { return kv1.TierDisk, f.held[uid] }
func (f *fakeTiers) Restore(_ context.Context, _ string, pod *v1.Pod, to []cuda.UUID) (engine.Result, error) {
	f.restored = append(f.restored, pod.Name)
	if f.err != nil {
		return engine.Result{}, f.err
	}
	delete(f.held, pod.UID)
	return engine.Result{Steps: []engine.Step{{Name: "Recreate", Duration: 2 * time.Second}}}, nil
}
func (f *fakeTiers) MakeRoom(context.Context, string, int64) (bool, error) { return true, nil }
func (f *fakeTiers) Export(context.Context, *v1.Pod, string) (ImageResult, error) {
	return ImageResult{}, errors.New("not in this test")
}

// A frozen pod whose container the tier policy spilled resumes from its tier, not by a thaw:
// Resuming, then Running, without a GPUResident condition (it has no GPUs); a failed restore
// leaves it Suspended.
func TestSpilledPodWithoutGPUsResumesFromTier(t *testing.T) {
	h := newFreezeHarness(t, cpuPod("llm", cpuNode, map[string]string{}))
	tiers := &fakeTiers{held: map[types.UID]bool{}}
	h.c.op.SetTiers(tiers)
	if ck := h.run(t, checkpoint("s1", "llm", kv1.ActionSuspend)); ck.Status.Phase != kv1.PhaseSucceeded {
		t.Fatalf("suspend %s (%s)", ck.Status.Phase, ck.Status.Message)
	}
	tiers.held["uid-llm"] = true
	tiers.err = errors.New("the kubelet did not create the container within 10m0s")
	r1 := checkpoint("r1", "llm", kv1.ActionResume)
	if _, err := h.kyb.KybernateV1alpha1().GPUCheckpoints("ml").Create(t.Context(), r1, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_ = h.ckIndex.Add(r1)
	if p, err := h.kube.CoreV1().Pods("ml").Get(t.Context(), "llm", metav1.GetOptions{}); err == nil {
		_ = h.podIndex.Update(p)
	}
	if err := h.c.Reconcile(t.Context(), "ml/r1"); err == nil || !strings.Contains(err.Error(), "did not create the container") {
		t.Errorf("Reconcile of a resume whose restore failed: %v, want the restore's error (requeued)", err)
	}
	if ck, err := h.kyb.KybernateV1alpha1().GPUCheckpoints("ml").Get(t.Context(), "r1", metav1.GetOptions{}); err != nil || ck.Status.Phase == kv1.PhaseSucceeded {
		t.Errorf("resume %v (%v), want not Succeeded", ck.Status.Phase, err)
	}
	if s := h.state(t, "llm"); s != string(kv1.PodSuspended) {
		t.Errorf("pod state %q after a failed restore, want Suspended", s)
	}
	tiers.err = nil
	if ck := h.run(t, checkpoint("r2", "llm", kv1.ActionResume)); ck.Status.Phase != kv1.PhaseSucceeded {
		t.Fatalf("resume %s (%s), want Succeeded", ck.Status.Phase, ck.Status.Message)
	}
	if s := h.state(t, "llm"); s != string(kv1.PodRunning) {
		t.Errorf("pod state %q after the resume, want Running", s)
	}
	if want := []string{"freeze llm"}; strings.Join(h.f.calls, ",") != strings.Join(want, ",") {
		t.Errorf("freezer calls %q, want %q (no thaw of a spilled container)", h.f.calls, want)
	}
	if want := []string{"llm", "llm"}; strings.Join(tiers.restored, ",") != strings.Join(want, ",") {
		t.Errorf("restores %q, want %q", tiers.restored, want)
	}
	p, err := h.kube.CoreV1().Pods("ml").Get(t.Context(), "llm", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range p.Status.Conditions {
		if c.Type == kv1.ConditionGPUResident {
			t.Errorf("a pod without GPUs got condition %s", c.Type)
		}
	}
	if ev := strings.Join(h.events(), "\n"); !strings.Contains(ev, "Normal Resumed Resumed from storage tier Disk: the pod has no GPUs") {
		t.Errorf("Events:\n%s\nwant Resumed from the tier", ev)
	}
}
