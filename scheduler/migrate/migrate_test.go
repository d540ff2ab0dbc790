package migrate

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/events"
	st "k8s.io/kubernetes/pkg/scheduler/testing"
	"k8s.io/utils/ptr"

	"github.com/kybernate/kybernate/apis/config"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/internal/controllertest"
)

const gi = int64(1) << 30

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func gpuNode(name, model, driver string) *kv1.GPUNode {
	gn := &kv1.GPUNode{ObjectMeta: metav1.ObjectMeta{Name: name}}
	gn.Spec.SlotsPerGPU = ptr.To[int32](2)
	gn.Status.DriverVersion, gn.Status.CUDADriverVersion = driver, 13000
	gn.Status.GPUs = []kv1.GPUStatus{{UUID: "GPU-" + name, Model: model, MemoryTotalBytes: 80 * gi}}
	gn.Status.Conditions = []metav1.Condition{{Type: kv1.GPUNodeReady, Status: metav1.ConditionTrue}}
	return gn
}

func node(name string) *v1.Node { return st.MakeNode().Name(name).Label(v1.LabelHostname, name).Obj() }

// gpuPod is a whole-GPU pod on node's GPU.
func gpuPod(name, node string, state kv1.PodGPUState) *v1.Pod {
	p := st.MakePod().Namespace("ns").Name(name).UID(name).Priority(100).Node(node).
		Req(map[v1.ResourceName]string{kv1.ResourceGPU: "1"}).
		Annotation(kv1.AnnotationGPUs, "GPU-"+node).Obj()
	if state != "" {
		p.Annotations[kv1.AnnotationState] = string(state)
	}
	p.Status.Phase = v1.PodRunning
	p.ResourceVersion = "7"
	return p
}

func suspension(pod string, ago time.Duration) *kv1.GPUCheckpoint {
	return &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{Name: pod + "-suspend", Namespace: "ns", UID: types.UID(pod + "-suspension-uid")},
		Spec:       kv1.GPUCheckpointSpec{PodName: pod, PodUID: pod, Action: kv1.ActionSuspend, Reason: kv1.ReasonPreemption},
		Status:     kv1.GPUCheckpointStatus{Phase: kv1.PhaseSucceeded, BytesMoved: 80 * gi, CompletionTime: &metav1.Time{Time: now.Add(-ago)}},
	}
}

var args = config.ControllerConfiguration{MigrationMinWait: metav1.Duration{Duration: 30 * time.Second}, MigrationBytesPerSecond: 10 * gi}

// runScan runs one scan and returns the pods marked for migration, with their target.
func runScan(t *testing.T, a config.ControllerConfiguration, gns []*kv1.GPUNode, pods []*v1.Pod, cks []*kv1.GPUCheckpoint, cordoned ...string) map[string]string {
	t.Helper()
	return runScanOn(t, gpupod.NewLedger(), a, gns, pods, cks, cordoned...)
}

// runScanOn is runScan with the program's ledger.
func runScanOn(t *testing.T, ledger *gpupod.Ledger, a config.ControllerConfiguration, gns []*kv1.GPUNode, pods []*v1.Pod, cks []*kv1.GPUCheckpoint, cordoned ...string) map[string]string {
	t.Helper()
	env := controllertest.New(pods)
	client, kclient := env.Client, env.Kybernate
	c, err := New(client, kclient, env.Pods, env.Nodes, env.GPUNodes, env.Checkpoints, events.NewFakeRecorder(100), a, ledger)
	if err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return now }
	nodes := make([]*v1.Node, len(gns))
	for i, gn := range gns {
		nodes[i] = node(gn.Name)
		nodes[i].Spec.Unschedulable = slices.Contains(cordoned, gn.Name)
	}
	env.Fill(t, pods, nodes, gns, cks)
	if err := c.scan(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, a := range kclient.Actions() {
		if cr, ok := a.(k8stesting.CreateAction); ok {
			ck := cr.GetObject().(*kv1.GPUCheckpoint)
			if ck.Spec.Action != kv1.ActionCheckpoint || ck.Spec.Reason != kv1.ReasonMigration {
				t.Errorf("created a %s GPUCheckpoint with reason %s", ck.Spec.Action, ck.Spec.Reason)
			}
			got[ck.Spec.PodName] = ck.Annotations[kv1.AnnotationMigrateTo]
		}
	}
	patched := 0
	for _, a := range client.Actions() {
		if _, ok := a.(k8stesting.PatchAction); ok {
			patched++
		}
	}
	if patched != len(got) {
		t.Errorf("%d pods marked, %d checkpoints requested", patched, len(got))
	}
	return got
}

func TestScan(t *testing.T) {
	h100 := "NVIDIA H100 80GB HBM3"
	a, b := gpuNode("a", h100, "580.95.05"), gpuNode("b", h100, "580.95.05")
	// On a: urgent resident, train suspended; b empty.
	scene := func(train *v1.Pod) []*v1.Pod { return []*v1.Pod{gpuPod("urgent", "a", ""), train} }
	owned := gpuPod("train", "a", kv1.PodSuspended)
	owned.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "rs", UID: "rs", Controller: ptr.To(true)}}
	tests := []struct {
		name string
		args config.ControllerConfiguration
		gns  []*kv1.GPUNode
		pods []*v1.Pod
		cks  []*kv1.GPUCheckpoint
		// cordoned nodes (kubectl cordon, drain)
		cordoned []string
		want     map[string]string
	}{
		{
			name: "waited long enough, b free: moves to b",
			gns:  []*kv1.GPUNode{a, b},
			pods: scene(gpuPod("train", "a", kv1.PodSuspended)),
			cks:  []*kv1.GPUCheckpoint{suspension("train", time.Minute)},
			want: map[string]string{"train": "b"},
		},
		{
			// Found by the kill storm: the agent marks a pod Suspended before it ends the
			// GPUCheckpoint (and before its GPUResident condition turns False). Read against the
			// suspension before, the pod had waited long and moved at once, its Checkpointing
			// mark counting it resident beside the preemptor that took its GPU.
			name: "a suspension the agent has not ended: waits for it",
			gns:  []*kv1.GPUNode{a, b},
			pods: scene(gpuPod("train", "a", kv1.PodSuspended)),
			cks: []*kv1.GPUCheckpoint{
				suspension("train", time.Hour),
				func() *kv1.GPUCheckpoint {
					ck := suspension("train", 0)
					ck.Name, ck.UID = "train-suspend-2", "train-suspension-2-uid"
					ck.Status = kv1.GPUCheckpointStatus{Phase: kv1.PhaseInProgress, StartTime: &metav1.Time{Time: now}}
					return ck
				}(),
			},
			want: map[string]string{},
		},
		{
			name: "a suspension already resumed is over: the pod's current one is not seen yet",
			gns:  []*kv1.GPUNode{a, b},
			pods: scene(gpuPod("train", "a", kv1.PodSuspended)),
			cks: []*kv1.GPUCheckpoint{
				suspension("train", time.Hour),
				{
					ObjectMeta: metav1.ObjectMeta{Name: "train-resume", Namespace: "ns", Labels: map[string]string{kv1.LabelSuspension: "train-suspension-uid"}},
					Spec:       kv1.GPUCheckpointSpec{PodName: "train", PodUID: "train", Action: kv1.ActionResume, Reason: kv1.ReasonPreemption},
					Status:     kv1.GPUCheckpointStatus{Phase: kv1.PhaseSucceeded, CompletionTime: &metav1.Time{Time: now.Add(-time.Minute)}},
				},
			},
			want: map[string]string{},
		},
		{
			name: "under migrationMinWait: waits",
			gns:  []*kv1.GPUNode{a, b},
			pods: scene(gpuPod("train", "a", kv1.PodSuspended)),
			cks:  []*kv1.GPUCheckpoint{suspension("train", 20*time.Second)},
			want: map[string]string{},
		},
		{
			name: "moving 80Gi at 1Gi/s takes longer than the wait so far: waits",
			args: config.ControllerConfiguration{MigrationMinWait: metav1.Duration{Duration: 30 * time.Second}, MigrationBytesPerSecond: gi},
			gns:  []*kv1.GPUNode{a, b},
			pods: scene(gpuPod("train", "a", kv1.PodSuspended)),
			cks:  []*kv1.GPUCheckpoint{suspension("train", time.Minute)},
			want: map[string]string{},
		},
		{
			name: "disabled",
			args: config.ControllerConfiguration{DisableMigration: true, MigrationBytesPerSecond: 10 * gi},
			gns:  []*kv1.GPUNode{a, b},
			pods: scene(gpuPod("train", "a", kv1.PodSuspended)),
			cks:  []*kv1.GPUCheckpoint{suspension("train", time.Minute)},
			want: map[string]string{},
		},
		{
			name: "other driver on b: stays",
			gns:  []*kv1.GPUNode{a, gpuNode("b", h100, "570.1")},
			pods: scene(gpuPod("train", "a", kv1.PodSuspended)),
			cks:  []*kv1.GPUCheckpoint{suspension("train", time.Minute)},
			want: map[string]string{},
		},
		{
			name: "other GPU model on b: stays",
			gns:  []*kv1.GPUNode{a, gpuNode("b", "NVIDIA H200", "580.95.05")},
			pods: scene(gpuPod("train", "a", kv1.PodSuspended)),
			cks:  []*kv1.GPUCheckpoint{suspension("train", time.Minute)},
			want: map[string]string{},
		},
		{
			name: "b full: stays",
			gns:  []*kv1.GPUNode{a, b},
			pods: append(scene(gpuPod("train", "a", kv1.PodSuspended)), gpuPod("other", "b", "")),
			cks:  []*kv1.GPUCheckpoint{suspension("train", time.Minute)},
			want: map[string]string{},
		},
		{
			name: "a has room again: left to the resume controller",
			gns:  []*kv1.GPUNode{a, b},
			pods: []*v1.Pod{gpuPod("train", "a", kv1.PodSuspended)},
			cks:  []*kv1.GPUCheckpoint{suspension("train", time.Minute)},
			want: map[string]string{},
		},
		{
			name: "owned by a ReplicaSet: never moves",
			gns:  []*kv1.GPUNode{a, b},
			pods: scene(owned),
			cks:  []*kv1.GPUCheckpoint{suspension("train", time.Minute)},
			want: map[string]string{},
		},
		{
			name: "suspended by hand: stays",
			gns:  []*kv1.GPUNode{a, b},
			pods: scene(gpuPod("train", "a", kv1.PodSuspended)),
			cks: []*kv1.GPUCheckpoint{func() *kv1.GPUCheckpoint {
				ck := suspension("train", time.Minute)
				ck.Spec.Reason = kv1.ReasonManual
				return ck
			}()},
			want: map[string]string{},
		},
		{
			name:     "node cordoned: moves at once, before migrationMinWait",
			gns:      []*kv1.GPUNode{a, b},
			pods:     scene(gpuPod("train", "a", kv1.PodSuspended)),
			cks:      []*kv1.GPUCheckpoint{suspension("train", time.Second)},
			cordoned: []string{"a"},
			want:     map[string]string{"train": "b"},
		},
		{
			name:     "node cordoned: moves even though its node has room",
			gns:      []*kv1.GPUNode{a, b},
			pods:     []*v1.Pod{gpuPod("train", "a", kv1.PodSuspended)},
			cks:      []*kv1.GPUCheckpoint{suspension("train", time.Second)},
			cordoned: []string{"a"},
			want:     map[string]string{"train": "b"},
		},
		{
			name: "node cordoned: a pod suspended by hand moves too",
			gns:  []*kv1.GPUNode{a, b},
			pods: scene(gpuPod("train", "a", kv1.PodSuspended)),
			cks: []*kv1.GPUCheckpoint{func() *kv1.GPUCheckpoint {
				ck := suspension("train", time.Second)
				ck.Spec.Reason = kv1.ReasonManual
				return ck
			}()},
			cordoned: []string{"a"},
			want:     map[string]string{"train": "b"},
		},
		{
			name:     "node cordoned, owned by a ReplicaSet: stays",
			gns:      []*kv1.GPUNode{a, b},
			pods:     scene(owned),
			cks:      []*kv1.GPUCheckpoint{suspension("train", time.Second)},
			cordoned: []string{"a"},
			want:     map[string]string{},
		},
		{
			name:     "both nodes cordoned: nowhere to go",
			gns:      []*kv1.GPUNode{a, b},
			pods:     scene(gpuPod("train", "a", kv1.PodSuspended)),
			cks:      []*kv1.GPUCheckpoint{suspension("train", time.Second)},
			cordoned: []string{"a", "b"},
			want:     map[string]string{},
		},
		{
			name: "two suspended pods, one free GPU: only one moves",
			gns:  []*kv1.GPUNode{a, b},
			pods: append(scene(gpuPod("train", "a", kv1.PodSuspended)), gpuPod("train2", "a", kv1.PodSuspended)),
			cks:  []*kv1.GPUCheckpoint{suspension("train", time.Minute), suspension("train2", 2*time.Minute)},
			want: map[string]string{"train2": "b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := tt.args
			if a.MigrationBytesPerSecond == 0 {
				a = args
			}
			got := runScan(t, a, tt.gns, tt.pods, tt.cks, tt.cordoned...)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("migrations (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEstimate(t *testing.T) {
	if got, want := Estimate(80*gi, 10*gi), Overhead+8*time.Second; got != want {
		t.Errorf("Estimate(80Gi, 10Gi/s) = %s, want %s", got, want)
	}
}

func TestReplacement(t *testing.T) {
	orig := gpuPod("train", "a", kv1.PodCheckpointed)
	orig.Labels = map[string]string{"app": "x", kv1.LabelTimeSlice: kv1.TimeSliceWaiting}
	orig.Annotations[kv1.AnnotationGPUMemory] = "10Gi"
	orig.Annotations[kv1.AnnotationMigrateTo] = "b"
	orig.Annotations[kv1.AnnotationGPUTime] = "3m"
	orig.Annotations[kv1.AnnotationSimulatedProgress] = "42"
	orig.OwnerReferences = []metav1.OwnerReference{{Kind: "ConfigMap", Name: "cm", UID: "cm"}}
	r := Replacement(orig, "train-mabcde", "b", []string{"GPU-b"}, "/images/ns/train-x")
	want := map[string]string{
		kv1.AnnotationGPUMemory:    "10Gi",
		kv1.AnnotationGPUs:         "GPU-b",
		kv1.AnnotationState:        string(kv1.PodRestoring),
		kv1.AnnotationRestoreFrom:  "/images/ns/train-x",
		kv1.AnnotationMigratedFrom: "ns/train/train",
	}
	if diff := cmp.Diff(want, r.Annotations); diff != "" {
		t.Errorf("annotations (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"app": "x"}, r.Labels); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}
	if r.Spec.NodeName != "b" || r.Name != "train-mabcde" || r.UID != "" || r.ResourceVersion != "" || len(r.OwnerReferences) != 1 {
		t.Errorf("replacement %s on %s (uid %q, rv %q, owners %v), want a new pod train-mabcde bound to b with the non-controller owner",
			r.Name, r.Spec.NodeName, r.UID, r.ResourceVersion, r.OwnerReferences)
	}
	if diff := cmp.Diff(orig.Spec.Containers, r.Spec.Containers); diff != "" {
		t.Errorf("containers differ (-orig +replacement):\n%s", diff)
	}
}

func TestReplacementName(t *testing.T) {
	ck := &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{UID: "0f1e2d3c-aaaa"}}
	long := gpuPod(fmt.Sprintf("%070d", 0), "a", "")
	for _, p := range []*v1.Pod{gpuPod("train", "a", ""), long} {
		got := replacementName(p, ck)
		if len(got) > 63 || got[len(got)-7:] != "-m0f1e2" {
			t.Errorf("replacementName(%s) = %s, want at most 63 characters ending in -m0f1e2", p.Name, got)
		}
	}
}

// The migration controller sees what the scheduler reserved in the program's ledger: a pod
// being bound to b, which no informer shows yet, leaves no room for a move there.
func TestScanSeesTheSchedulersReservations(t *testing.T) {
	h100 := "NVIDIA H100 80GB HBM3"
	a, b := gpuNode("a", h100, "580.95.05"), gpuNode("b", h100, "580.95.05")
	pods := []*v1.Pod{gpuPod("urgent", "a", ""), gpuPod("train", "a", kv1.PodSuspended)}
	cks := []*kv1.GPUCheckpoint{suspension("train", time.Minute)}
	ledger := gpupod.NewLedger()
	ledger.Reserve(gpupod.OwnerScheduler, gpuPod("binding", "b", ""), 0)
	if got := runScanOn(t, ledger, args, []*kv1.GPUNode{a, b}, pods, cks); len(got) != 0 {
		t.Errorf("migrations %v onto memory the scheduler reserved", got)
	}
	ledger.Release("binding")
	if diff := cmp.Diff(map[string]string{"train": "b"}, runScanOn(t, ledger, args, []*kv1.GPUNode{a, b}, pods, cks)); diff != "" {
		t.Errorf("migrations (-want +got):\n%s", diff)
	}
}
