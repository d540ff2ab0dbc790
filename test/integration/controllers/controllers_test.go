// Package controllers tests that kybernate-scheduler runs its resume and time-slice
// controllers from its ControllerConfiguration whatever its profiles enable: here a profile
// with GPUShare alone, no CheckpointPreemption and no PostFilter plugin at all, on a real
// control plane with one kwok node whose one GPU the simulated node agent serves.
package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/util"
)

const (
	node     = "kwok-gpu-0"
	priority = "kyb-ctrl-equal"
	quantum  = 5 * time.Second
)

// profile enables GPUShare only: no CheckpointPreemption, and no PostFilter plugin, so that
// nothing but this test nominates a pending pod.
const profile = `apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
leaderElection:
  leaderElect: false
profiles:
- schedulerName: kybernate-scheduler
  plugins:
    multiPoint:
      enabled:
      - name: GPUShare
        weight: 10
    postFilter:
      disabled:
      - name: "*"
    bind:
      enabled:
      - name: GPUShare
      - name: DefaultBinder
`

const controllers = `apiVersion: config.kybernate.io/v1
kind: ControllerConfiguration
timeSliceQuantum: 5s
disableMigration: true
`

func TestMain(m *testing.M) {
	framework.MainWithGPUNodes(m, 1, 1)
}

// Two equal-priority pods share one GPU that holds one of them, under a profile without
// CheckpointPreemption. The waiting pod is nominated to the node by hand, as a preemption
// would: the time-slice controller ends the running pod's turn after the quantum (a Suspend,
// reason TimeSlice, naming the waiting pod), the waiting pod binds, and when its turn ends
// the resume controller brings the first pod back (a Resume linked to its suspension).
func TestControllersWithoutCheckpointPreemption(t *testing.T) {
	c := framework.Get(t)
	ctx := t.Context()
	kc := c.Kybernate(t)
	pc := &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: priority}, Value: 100}
	if _, err := c.Client.SchedulingV1().PriorityClasses().Create(ctx, pc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	system := &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kybernate-system"}} // the controllers' Lease
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, system, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	c.StartSimulatedAgent(t, "--slots-per-gpu", "2", "--simulate-checkpoint-rate", "500000000000",
		"--simulate-restore-rate", "1000000000000", "--simulate-progress-period", "250ms")
	c.Start(t, "kybernate-scheduler", "--config", c.WriteSchedulerConfig(t, profile),
		"--controllers-config", c.WriteControllerConfig(t, controllers), "--secure-port", "0", "--v=4")
	framework.WaitForGPUNodes(ctx, t, kc, 1, 1, time.Minute)

	ns := c.CreateNamespace(t)
	gpuPod := func(name string) *v1.Pod {
		return util.MakePod().Namespace(ns).Name(name).SchedulerName("kybernate-scheduler").
			PriorityClassName(priority).NodeSelector(v1.LabelHostname, node).GPU(1).GPUMemory("50Gi").Obj()
	}
	a, err := c.Client.CoreV1().Pods(ns).Create(ctx, gpuPod("a"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	framework.WaitForPodRunning(ctx, t, c.Client, ns, "a", time.Minute)
	b, err := c.Client.CoreV1().Pods(ns).Create(ctx, gpuPod("b"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	framework.WaitForPod(ctx, t, c.Client, ns, "b", time.Minute, "unschedulable", func(p *v1.Pod) bool {
		return slices.ContainsFunc(p.Status.Conditions, func(c v1.PodCondition) bool {
			return c.Type == v1.PodScheduled && c.Status == v1.ConditionFalse && c.Reason == v1.PodReasonUnschedulable
		})
	})
	nominate, _ := json.Marshal(map[string]any{"status": map[string]any{"nominatedNodeName": node}})
	if _, err := c.Client.CoreV1().Pods(ns).Patch(ctx, "b", types.StrategicMergePatchType, nominate, metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}

	// a's turn ends for b: the time-slice controller's suspension names b.
	turn := waitCheckpoint(ctx, t, c, ns, 4*quantum, "a's turn to end for b", func(ck *kv1.GPUCheckpoint) bool {
		return ck.Spec.PodUID == string(a.UID) && ck.Spec.Action == kv1.ActionSuspend && ck.Spec.Reason == kv1.ReasonTimeSlice &&
			ck.Labels[kv1.LabelPreemptor] == string(b.UID) && ck.Status.Phase == kv1.PhaseSucceeded
	})
	framework.WaitForPod(ctx, t, c.Client, ns, "b", time.Minute, "bound to the node", func(p *v1.Pod) bool {
		return p.Spec.NodeName == node && p.Annotations[kv1.AnnotationGPUs] != ""
	})
	// b's turn ends in turn, and the resume controller brings a back from its suspension.
	waitCheckpoint(ctx, t, c, ns, 4*quantum, "b's turn to end", func(ck *kv1.GPUCheckpoint) bool {
		return ck.Spec.PodUID == string(b.UID) && ck.Spec.Action == kv1.ActionSuspend && ck.Spec.Reason == kv1.ReasonTimeSlice
	})
	resumed := waitCheckpoint(ctx, t, c, ns, 4*quantum, "a's resume", func(ck *kv1.GPUCheckpoint) bool {
		return ck.Spec.PodUID == string(a.UID) && ck.Spec.Action == kv1.ActionResume && ck.Status.Phase == kv1.PhaseSucceeded
	})
	if got := resumed.Labels[kv1.LabelSuspension]; got != string(turn.UID) {
		t.Errorf("resume %s undoes suspension %q, want %s (%s)", resumed.Name, got, turn.UID, turn.Name)
	}
	framework.WaitForPod(ctx, t, c.Client, ns, "a", time.Minute, "resident again", func(p *v1.Pod) bool {
		s := kv1.PodGPUState(p.Annotations[kv1.AnnotationState])
		return p.Status.Phase == v1.PodRunning && (s == "" || s == kv1.PodRunning)
	})
}

// waitCheckpoint waits for a GPUCheckpoint of the namespace that matches and returns it.
func waitCheckpoint(ctx context.Context, t *testing.T, c *framework.Cluster, ns string, timeout time.Duration, what string, match func(*kv1.GPUCheckpoint) bool) *kv1.GPUCheckpoint {
	t.Helper()
	kc := c.Kybernate(t)
	var found *kv1.GPUCheckpoint
	framework.WaitFor(ctx, t, timeout, what, func(ctx context.Context) (bool, error) {
		list, err := kc.KybernateV1alpha1().GPUCheckpoints(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, fmt.Errorf("listing GPUCheckpoints: %w", err)
		}
		for i := range list.Items {
			if match(&list.Items[i]) {
				found = &list.Items[i]
				return true, nil
			}
		}
		return false, nil
	})
	return found
}
