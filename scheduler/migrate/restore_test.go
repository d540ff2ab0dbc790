package migrate

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/events"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/internal/controllertest"
)

// Found by the kill storm: the agent refused a replacement's restore within a millisecond, and
// the migration controller saw the failure before its pod informer showed the replacement it had
// just created. The replacement must still be deleted, not left Restoring beside the original.
func TestRestoreFailedDeletesAReplacementTheInformerHasNotShown(t *testing.T) {
	orig := gpuPod("train", "a", kv1.PodCheckpointed)
	repl := gpuPod("train-m1", "b", kv1.PodRestoring)
	repl.Annotations[kv1.AnnotationMigratedFrom] = gpupod.FormatMigratedFrom(orig)
	other := gpuPod("train-m2", "b", kv1.PodRestoring) // same kind of name, not this pod's replacement
	env := controllertest.New([]*v1.Pod{orig, repl, other})
	c, err := New(env.Client, env.Kybernate, env.Pods, env.Nodes, env.GPUNodes, env.Checkpoints, events.NewFakeRecorder(100), args, gpupod.NewLedger())
	if err != nil {
		t.Fatal(err)
	}
	env.Fill(t, []*v1.Pod{orig}, nil, nil, nil) // the informer has not seen the replacements
	ck := &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{Name: "train-migrate", Namespace: "ns", Annotations: map[string]string{kv1.AnnotationMigrateTo: "b"}}}
	restore := &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{Name: "train-m1-restore", Namespace: "ns"},
		Status: kv1.GPUCheckpointStatus{Phase: kv1.PhaseFailed, Message: "InsufficientGPUMemory"}}

	for _, name := range []string{"train-m2", "train-m1"} {
		env.Client.ClearActions()
		if err := c.restoreFailed(t.Context(), orig, nil, ck, restore, name); err != nil {
			t.Fatal(err)
		}
		var deleted []string
		for _, a := range env.Client.Actions() {
			if d, ok := a.(k8stesting.DeleteAction); ok {
				deleted = append(deleted, d.GetName())
			}
		}
		want := map[string][]string{"train-m2": nil, "train-m1": {"train-m1"}}[name]
		if len(deleted) != len(want) || len(want) == 1 && deleted[0] != want[0] {
			t.Errorf("restore of %s failed: deleted %v, want %v", name, deleted, want)
		}
	}
}
