package controller

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	testingclock "k8s.io/utils/clock/testing"

	kybfake "github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned/fake"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/cuda/fake"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

const (
	gib  = int64(1) << 30
	node = "node-a"
)

var (
	devs = fake.Devices(2, "NVIDIA H100 80GB HBM3", 80<<30)
	gpu0 = devs[0].UUID.String()
	gpu1 = devs[1].UUID.String()
)

// driverFinder finds pods' processes in the fake driver.
type driverFinder struct {
	d    *fake.Driver
	pids map[types.UID][]int
}

func (f *driverFinder) Processes(_ context.Context, pod podmap.PodRef) ([]engine.Process, error) {
	var out []engine.Process
	for _, pid := range f.pids[pod.UID] {
		if p, ok := f.d.Process(pid); ok {
			out = append(out, engine.Process{PID: pid, GPU: p.GPU, Bytes: int64(p.VRAM), State: p.State})
		}
	}
	return out, nil
}

type fixedMemory int64

func (m fixedMemory) MemAvailable() (int64, error) { return int64(m), nil }

func gpuPod(name, nodeName string, gpus string, annotations ...string) *v1.Pod {
	p := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: name, UID: types.UID("uid-" + name),
			Annotations: map[string]string{kv1.AnnotationGPUs: gpus}},
		Spec:   v1.PodSpec{NodeName: nodeName},
		Status: v1.PodStatus{Phase: v1.PodRunning},
	}
	for i := 0; i+1 < len(annotations); i += 2 {
		p.Annotations[annotations[i]] = annotations[i+1]
	}
	return p
}

func checkpoint(name, pod string, action kv1.CheckpointAction, targets ...string) *kv1.GPUCheckpoint {
	return &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: name, UID: types.UID("ck-" + name), Generation: 1},
		Spec:       kv1.GPUCheckpointSpec{PodName: pod, Action: action, Reason: kv1.ReasonManual, TargetGPUs: targets},
	}
}

type harness struct {
	c        *Controller
	kube     *kubefake.Clientset
	kyb      *kybfake.Clientset
	d        *fake.Driver
	e        *engine.Engine
	recorder *record.FakeRecorder
	changed  []string
	ckIndex  cache.Indexer
}

// newHarness serves node-a with two GPUs: pod train has 30 GiB on gpu0 (pid 100).
func newHarness(t *testing.T, hostMemory int64, pods []*v1.Pod, ckpts ...*kv1.GPUCheckpoint) *harness {
	t.Helper()
	d := fake.New(devs...)
	if err := errors.Join(d.Init(), d.AddProcess(100, devs[0].UUID, uint64(30*gib))); err != nil {
		t.Fatal(err)
	}
	clk := testingclock.NewFakeClock(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC))
	e := engine.New(d, &driverFinder{d: d, pids: map[types.UID][]int{"uid-train": {100}}}, fixedMemory(hostMemory), d, d,
		engine.Config{LockTimeout: 5 * time.Second, StepTimeout: time.Minute, HostMemoryReserve: 8 * gib}, clk)
	h := &harness{kube: kubefake.NewClientset(), kyb: kybfake.NewSimpleClientset(), d: d, e: e, recorder: record.NewFakeRecorder(100)}
	podIndex := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	ckIndex := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, p := range pods {
		if _, err := h.kube.CoreV1().Pods(p.Namespace).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if p.Spec.NodeName == node {
			_ = podIndex.Add(p) // the agent's cache has its node's pods only
		}
	}
	for _, ck := range ckpts {
		if _, err := h.kyb.KybernateV1alpha1().GPUCheckpoints(ck.Namespace).Create(t.Context(), ck, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		_ = ckIndex.Add(ck)
	}
	h.ckIndex = ckIndex
	op := NewOperator(h.kube, EngineMap{node: e}, h.recorder, clk, func(n string) { h.changed = append(h.changed, n) })
	h.c = New(Config{}, h.kube, h.kyb, listers.NewGPUCheckpointLister(ckIndex), corelisters.NewPodLister(podIndex), op, clk)
	return h
}

func (h *harness) events() []string {
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

func (h *harness) get(t *testing.T, name string) *kv1.GPUCheckpoint {
	t.Helper()
	ck, err := h.kyb.KybernateV1alpha1().GPUCheckpoints("ml").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ck
}

func (h *harness) pod(t *testing.T, name string) *v1.Pod {
	t.Helper()
	p, err := h.kube.CoreV1().Pods("ml").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func resident(p *v1.Pod) string {
	for _, c := range p.Status.Conditions {
		if c.Type == kv1.ConditionGPUResident {
			return string(c.Status) + "/" + c.Reason
		}
	}
	return ""
}

func TestReconcileSuspend(t *testing.T) {
	h := newHarness(t, 100*gib, []*v1.Pod{gpuPod("train", node, gpu0)}, checkpoint("s", "train", kv1.ActionSuspend))
	if err := h.c.Reconcile(t.Context(), "ml/s"); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	ck := h.get(t, "s")
	if ck.Status.Phase != kv1.PhaseSucceeded || ck.Status.BytesMoved != 30*gib || ck.Status.NodeName != node || ck.Status.StartTime == nil || ck.Status.CompletionTime == nil {
		t.Errorf("status %+v, want Succeeded on %s with 30Gi moved and times", ck.Status, node)
	}
	if diff := cmp.Diff([]kv1.StepTiming{{Name: "Lock"}, {Name: "Checkpoint", Bytes: 30 * gib}}, ck.Status.Steps); diff != "" {
		t.Errorf("steps (-want +got):\n%s", diff)
	}
	if c := meta.FindStatusCondition(ck.Status.Conditions, kv1.CheckpointComplete); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("Complete %+v, want True", c)
	}
	pod := h.pod(t, "train")
	if got := pod.Annotations[kv1.AnnotationState]; got != "Suspended" {
		t.Errorf("pod state %q, want Suspended", got)
	}
	if got := resident(pod); got != "False/Suspended" {
		t.Errorf("pod condition %q, want False/Suspended", got)
	}
	want := []string{
		"Normal Suspending Suspending: moving GPU memory to host memory",
		"Normal Suspended Suspended: moved 30Gi of GPU memory to host memory in 0s (Lock 0s, Checkpoint 0s)",
	}
	if diff := cmp.Diff(want, h.events()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{node}, h.changed); diff != "" {
		t.Errorf("status triggers (-want +got):\n%s", diff)
	}
	if p, _ := h.d.Process(100); p.State != cuda.ProcessStateCheckpointed {
		t.Errorf("process %v, want CHECKPOINTED", p.State)
	}

	// Finished objects are left alone, also while the cache still shows them pending.
	calls := len(h.d.Calls())
	if err := h.c.Reconcile(t.Context(), "ml/s"); err != nil {
		t.Fatal(err)
	}
	if len(h.d.Calls()) != calls {
		t.Error("a finished GPUCheckpoint was acted on again")
	}

	// A Resume right away works although the cached pod does not show it Suspended yet.
	r := checkpoint("r", "train", kv1.ActionResume)
	if _, err := h.kyb.KybernateV1alpha1().GPUCheckpoints("ml").Create(t.Context(), r, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := h.ckIndex.Add(r); err != nil {
		t.Fatal(err)
	}
	if err := h.c.Reconcile(t.Context(), "ml/r"); err != nil {
		t.Fatalf("Reconcile resume: %v", err)
	}
	if ck := h.get(t, "r"); ck.Status.Phase != kv1.PhaseSucceeded {
		t.Errorf("resume %s: %s, want Succeeded", ck.Status.Phase, ck.Status.Message)
	}
}

func TestReconcileResumeOntoOtherGPU(t *testing.T) {
	h := newHarness(t, 100*gib, []*v1.Pod{gpuPod("train", node, gpu0, kv1.AnnotationState, "Suspended")},
		checkpoint("r", "train", kv1.ActionResume, gpu1))
	if _, err := h.e.Suspend(t.Context(), podmap.PodRef{Namespace: "ml", Name: "train", UID: "uid-train"}, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.c.Reconcile(t.Context(), "ml/r"); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	ck := h.get(t, "r")
	if ck.Status.Phase != kv1.PhaseSucceeded || !cmp.Equal([]string{gpu1}, ck.Status.GPUs) {
		t.Errorf("status %+v, want Succeeded onto %s", ck.Status, gpu1)
	}
	pod := h.pod(t, "train")
	if got := pod.Annotations[kv1.AnnotationGPUs]; got != gpu1 {
		t.Errorf("pod gpus %q, want %s", got, gpu1)
	}
	if got := pod.Annotations[kv1.AnnotationState]; got != "Running" {
		t.Errorf("pod state %q, want Running", got)
	}
	if got := resident(pod); got != "True/Resumed" {
		t.Errorf("pod condition %q, want True/Resumed", got)
	}
	if p, _ := h.d.Process(100); p.State != cuda.ProcessStateRunning || p.GPU.String() != gpu1 {
		t.Errorf("process %v on %s, want RUNNING on %s", p.State, p.GPU, gpu1)
	}
	ev := h.events()
	if len(ev) != 2 || !strings.HasPrefix(ev[0], "Normal Resuming") || !strings.HasPrefix(ev[1], "Normal Resumed Resumed: moved 30Gi of GPU memory onto GPUs "+gpu1) {
		t.Errorf("events %q", ev)
	}
}

func TestReconcileFailures(t *testing.T) {
	unknown := "GPU-12345678-0000-0000-0000-000000000000"
	tests := []struct {
		name       string
		pods       []*v1.Pod
		ck         *kv1.GPUCheckpoint
		hostMemory int64
		setup      func(h *harness)
		wantReason string
		wantMsg    string
		wantRolled string
		wantEvents []string
		wantState  string
	}{
		{
			name: "pod missing", ck: checkpoint("x", "ghost", kv1.ActionSuspend),
			wantReason: ReasonInvalid, wantMsg: "pod ml/ghost does not exist",
		},
		{
			name: "pod not bound", pods: []*v1.Pod{gpuPod("pending", "", gpu0)}, ck: checkpoint("x", "pending", kv1.ActionSuspend),
			wantReason: ReasonInvalid, wantMsg: "pod ml/pending is not bound to a node",
		},
		{
			name: "pod replaced", pods: []*v1.Pod{gpuPod("train", node, gpu0)},
			ck: func() *kv1.GPUCheckpoint {
				c := checkpoint("x", "train", kv1.ActionSuspend)
				c.Spec.PodUID = "old-uid"
				return c
			}(),
			wantReason: ReasonInvalid, wantMsg: "pod ml/train has UID uid-train, but this GPUCheckpoint is for UID old-uid: the pod was replaced",
		},
		{
			name: "checkpoint action", pods: []*v1.Pod{gpuPod("train", node, gpu0)}, ck: checkpoint("x", "train", kv1.ActionCheckpoint),
			wantReason: ReasonInvalid, wantMsg: "this agent has no --checkpoint-dir",
		},
		{
			name: "unknown gpu", pods: []*v1.Pod{gpuPod("train", node, unknown)}, ck: checkpoint("x", "train", kv1.ActionSuspend),
			wantReason: ReasonInvalid,
			wantMsg:    "annotation kybernate.io/gpus of pod ml/train names gpu " + unknown + ", which is not a gpu of node node-a (it has " + gpu0 + ", " + gpu1 + ")",
		},
		{
			name: "unknown target gpu", pods: []*v1.Pod{gpuPod("train", node, gpu0, kv1.AnnotationState, "Suspended")}, ck: checkpoint("x", "train", kv1.ActionResume, unknown),
			wantReason: ReasonInvalid, wantMsg: "target gpus names gpu " + unknown + ", which is not a gpu of node node-a",
		},
		{
			name: "suspend a suspended pod", pods: []*v1.Pod{gpuPod("train", node, gpu0, kv1.AnnotationState, "Suspended")}, ck: checkpoint("x", "train", kv1.ActionSuspend),
			wantReason: ReasonInvalid, wantMsg: "pod ml/train is Suspended (annotation kybernate.io/state); this needs a pod that is Running or Suspending",
		},
		{
			name: "resume a running pod", pods: []*v1.Pod{gpuPod("train", node, gpu0)}, ck: checkpoint("x", "train", kv1.ActionResume),
			wantReason: ReasonInvalid, wantMsg: "pod ml/train is Running (annotation kybernate.io/state); this needs a pod that is Suspended or Resuming",
		},
		{
			name: "lock timeout", pods: []*v1.Pod{gpuPod("train", node, gpu0)}, ck: checkpoint("x", "train", kv1.ActionSuspend),
			setup:      func(h *harness) { _ = h.d.SetBusy(100, true) },
			wantReason: "LockTimeout", wantMsg: "suspend pod ml/train: LockTimeout: pid 100 did not finish its gpu work within 5s", wantRolled: "True",
			wantEvents: []string{"Normal Suspending", "Warning SuspendFailed Suspend failed (LockTimeout): suspend pod ml/train: LockTimeout: pid 100"},
			wantState:  "Running",
		},
		{
			name: "host memory exhausted", pods: []*v1.Pod{gpuPod("train", node, gpu0)}, ck: checkpoint("x", "train", kv1.ActionSuspend),
			hostMemory: 20 * gib,
			wantReason: "HostMemoryExhausted", wantMsg: "parking the pod's 30Gi of gpu memory needs as much host memory, but only 12Gi is parkable",
			wantEvents: []string{"Normal Suspending", "Warning SuspendFailed Suspend failed (HostMemoryExhausted)"},
			wantState:  "Running",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := tt.hostMemory
			if mem == 0 {
				mem = 100 * gib
			}
			h := newHarness(t, mem, tt.pods, tt.ck)
			if tt.setup != nil {
				tt.setup(h)
			}
			if err := h.c.Reconcile(t.Context(), "ml/x"); err != nil {
				t.Fatalf("Reconcile: %v", err)
			}
			ck := h.get(t, "x")
			if ck.Status.Phase != kv1.PhaseFailed || !strings.Contains(ck.Status.Message, tt.wantMsg) {
				t.Errorf("status %s %q, want Failed containing %q", ck.Status.Phase, ck.Status.Message, tt.wantMsg)
			}
			if c := meta.FindStatusCondition(ck.Status.Conditions, kv1.CheckpointComplete); c == nil || c.Status != metav1.ConditionFalse || c.Reason != tt.wantReason {
				t.Errorf("Complete %+v, want False/%s", c, tt.wantReason)
			}
			rolled := ""
			if c := meta.FindStatusCondition(ck.Status.Conditions, kv1.CheckpointRolledBack); c != nil {
				rolled = string(c.Status)
			}
			if rolled != tt.wantRolled {
				t.Errorf("RolledBack %q, want %q", rolled, tt.wantRolled)
			}
			ev := h.events()
			if len(ev) != len(tt.wantEvents) {
				t.Fatalf("events %q, want %d starting %q", ev, len(tt.wantEvents), tt.wantEvents)
			}
			for i := range ev {
				if !strings.HasPrefix(ev[i], tt.wantEvents[i]) {
					t.Errorf("event %d %q, want it to start with %q", i, ev[i], tt.wantEvents[i])
				}
			}
			if tt.wantState != "" {
				if got := h.pod(t, "train").Annotations[kv1.AnnotationState]; got != tt.wantState {
					t.Errorf("pod state %q, want %q", got, tt.wantState)
				}
			}
		})
	}
}

func TestReconcileLeavesOtherNodesAlone(t *testing.T) {
	h := newHarness(t, 100*gib, []*v1.Pod{gpuPod("elsewhere", "node-b", gpu0)}, checkpoint("x", "elsewhere", kv1.ActionSuspend))
	if err := h.c.Reconcile(t.Context(), "ml/x"); err != nil {
		t.Fatal(err)
	}
	if ck := h.get(t, "x"); ck.Status.Phase != "" {
		t.Errorf("phase %q, want untouched", ck.Status.Phase)
	}

	// Taken on by the agent of node-b: not looked at again, even with its pod gone.
	taken := checkpoint("y", "gone", kv1.ActionSuspend)
	taken.Status = kv1.GPUCheckpointStatus{Phase: kv1.PhaseInProgress, NodeName: "node-b"}
	if err := h.ckIndex.Add(taken); err != nil {
		t.Fatal(err)
	}
	h.kube.ClearActions()
	if err := h.c.Reconcile(t.Context(), "ml/y"); err != nil {
		t.Fatal(err)
	}
	if a := h.kube.Actions(); len(a) != 0 {
		t.Errorf("API calls %v for another agent's GPUCheckpoint, want none", a)
	}
}

func TestReconcileRetriesStatusWriteWithoutRedoing(t *testing.T) {
	h := newHarness(t, 100*gib, []*v1.Pod{gpuPod("train", node, gpu0)}, checkpoint("s", "train", kv1.ActionSuspend))
	writes := 0
	h.kyb.PrependReactor("update", "gpucheckpoints", func(a k8stesting.Action) (bool, runtime.Object, error) {
		writes++
		if writes == 2 { // the final write, after InProgress
			return true, nil, apierrors.NewServiceUnavailable("etcd is having a moment")
		}
		return false, nil, nil
	})
	if err := h.c.Reconcile(t.Context(), "ml/s"); err == nil {
		t.Fatal("Reconcile succeeded, want the failed status write")
	}
	locks := func() int {
		n := 0
		for _, c := range h.d.Calls() {
			if c.Name == fake.CallLock {
				n++
			}
		}
		return n
	}
	if locks() != 1 {
		t.Fatalf("%d locks, want 1", locks())
	}
	if err := h.c.Reconcile(t.Context(), "ml/s"); err != nil {
		t.Fatalf("second Reconcile: %v", err)
	}
	if locks() != 1 {
		t.Errorf("%d locks after the retry, want still 1", locks())
	}
	if ck := h.get(t, "s"); ck.Status.Phase != kv1.PhaseSucceeded {
		t.Errorf("phase %s, want Succeeded", ck.Status.Phase)
	}
}
