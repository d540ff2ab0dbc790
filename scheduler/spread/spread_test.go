package spread

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

var now = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

func gpuNode(sizesGiB ...int64) *kv1.GPUNode {
	gn := &kv1.GPUNode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	gn.Spec.SlotsPerGPU = ptr.To[int32](4)
	gn.Status.HostMemory.ParkableBytes = 1024 * gi
	for i, s := range sizesGiB {
		gn.Status.GPUs = append(gn.Status.GPUs, kv1.GPUStatus{UUID: fmt.Sprintf("GPU-%d", i), Index: int32(i), Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: s * gi})
	}
	return gn
}

// running is a pod on GPU-<gpu> of n1, resident since an hour before now.
func running(name, mem string, gpu int) *v1.Pod {
	p := st.MakePod().Namespace("ns").Name(name).UID(name).Priority(1).Node("n1").
		Req(map[v1.ResourceName]string{kv1.ResourceGPU: "1"}).
		Annotation(kv1.AnnotationGPUMemory, mem).
		Annotation(kv1.AnnotationGPUs, fmt.Sprintf("GPU-%d", gpu)).
		Annotation(kv1.AnnotationState, string(kv1.PodRunning)).Obj()
	p.Status.Phase = v1.PodRunning
	p.Status.StartTime = &metav1.Time{Time: now.Add(-time.Hour)}
	return p
}

func withState(p *v1.Pod, s kv1.PodGPUState) *v1.Pod {
	p.Annotations[kv1.AnnotationState] = string(s)
	return p
}

func withAnnotation(p *v1.Pod, k, v string) *v1.Pod {
	p.Annotations[k] = v
	return p
}

// suspension is a GPUCheckpoint of a pod that ended a minute before now.
func suspension(pod string, reason kv1.CheckpointReason, phase kv1.CheckpointPhase) *kv1.GPUCheckpoint {
	return &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{Name: pod + "-" + strings.ToLower(string(reason)), Namespace: "ns"},
		Spec:       kv1.GPUCheckpointSpec{PodName: pod, PodUID: pod, Action: kv1.ActionSuspend, Reason: reason},
		Status: kv1.GPUCheckpointStatus{Phase: phase, StartTime: &metav1.Time{Time: now.Add(-2 * time.Minute)},
			CompletionTime: &metav1.Time{Time: now.Add(-time.Minute)}},
	}
}

type setup struct {
	gn       *kv1.GPUNode
	pods     []*v1.Pod
	cks      []*kv1.GPUCheckpoint
	cordoned bool
	ledger   func(*gpupod.Ledger)
	cfg      config.ControllerConfiguration
}

// run syncs n1 and returns the pods the controller asked to suspend (reason Spread) and the
// Events it recorded.
func run(t *testing.T, s setup) (suspended []string, evs []string, c *Controller) {
	t.Helper()
	env := controllertest.New(s.pods)
	ledger := gpupod.NewLedger()
	if s.ledger != nil {
		s.ledger(ledger)
	}
	rec := events.NewFakeRecorder(100)
	c, err := New(env.Kybernate, env.Pods, env.Nodes, env.GPUNodes, env.Checkpoints, rec, s.cfg, ledger)
	if err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return now }
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: v1.NodeSpec{Unschedulable: s.cordoned}}
	env.Fill(t, s.pods, []*v1.Node{node}, []*kv1.GPUNode{s.gn}, s.cks)
	if err := c.sync(t.Context(), "n1"); err != nil {
		t.Fatal(err)
	}
	for _, a := range env.Kybernate.Actions() {
		cr, ok := a.(k8stesting.CreateAction)
		if !ok {
			continue
		}
		ck := cr.GetObject().(*kv1.GPUCheckpoint)
		if ck.Spec.Action != kv1.ActionSuspend || ck.Spec.Reason != kv1.ReasonSpread || ck.Spec.Preemptor != nil || len(ck.OwnerReferences) != 1 {
			t.Errorf("created %+v, want a Suspend with reason Spread owned by its pod", ck.Spec)
		}
		suspended = append(suspended, ck.Spec.PodName)
	}
	close(rec.Events)
	for e := range rec.Events {
		evs = append(evs, e)
	}
	sort.Strings(suspended)
	return suspended, evs, c
}

func TestSync(t *testing.T) {
	never := func(p *v1.Pod) *v1.Pod { return withAnnotation(p, kv1.AnnotationPreemption, "Never") }
	tests := []struct {
		name string
		setup
		want []string
	}{{
		name:  "two pods share a GPU, the other is unused: the smaller moves",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("big", "40Gi", 0), running("small", "20Gi", 0)}},
		want:  []string{"small"},
	}, {
		name:  "three pods on one GPU, two unused: two move, one stays",
		setup: setup{gn: gpuNode(80, 80, 80), pods: []*v1.Pod{running("a", "20Gi", 0), running("b", "20Gi", 0), running("c", "30Gi", 0)}},
		want:  []string{"a", "b"},
	}, {
		name:  "each pod alone on its GPU: nothing moves",
		setup: setup{gn: gpuNode(80, 80, 80), pods: []*v1.Pod{running("a", "20Gi", 0), running("b", "20Gi", 1)}},
	}, {
		name:  "preemption Never stays; the other moves",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("big", "40Gi", 0), never(running("small", "20Gi", 0))}},
		want:  []string{"big"},
	}, {
		name: "a pod suspended for a turn waits on the node: nothing moves",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("a", "20Gi", 0), running("b", "20Gi", 0), withState(running("w", "80Gi", 0), kv1.PodSuspended)},
			cks: []*kv1.GPUCheckpoint{suspension("w", kv1.ReasonTimeSlice, kv1.PhaseSucceeded)}},
	}, {
		name: "a pod suspended by hand holds its GPU by its slot",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("a", "20Gi", 0), running("b", "20Gi", 0), withState(running("m", "80Gi", 1), kv1.PodSuspended)},
			cks: []*kv1.GPUCheckpoint{suspension("m", kv1.ReasonManual, kv1.PhaseSucceeded)}},
	}, {
		name: "a pod suspended by hand elsewhere does not keep the node unsettled",
		setup: setup{gn: gpuNode(80, 80, 80), pods: []*v1.Pod{running("a", "20Gi", 0), running("b", "30Gi", 0), withState(running("m", "80Gi", 1), kv1.PodSuspended)},
			cks: []*kv1.GPUCheckpoint{suspension("m", kv1.ReasonManual, kv1.PhaseSucceeded)}},
		want: []string{"a"},
	}, {
		name: "a move in flight on the node: nothing moves",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("a", "20Gi", 0), running("b", "30Gi", 0)},
			cks: []*kv1.GPUCheckpoint{suspension("b", kv1.ReasonTimeSlice, kv1.PhaseInProgress)}},
	}, {
		name: "a pod being deleted: nothing moves until it is gone",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("a", "20Gi", 0), running("b", "30Gi", 0), func() *v1.Pod {
			p := running("c", "10Gi", 0)
			p.DeletionTimestamp = &metav1.Time{Time: now}
			return p
		}()}},
	}, {
		name:  "a pod between states: nothing moves",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("a", "20Gi", 0), withState(running("b", "30Gi", 0), kv1.PodResuming)}},
	}, {
		name: "a pod nominated to the node waits for it: nothing moves",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("a", "20Gi", 0), running("b", "30Gi", 0), func() *v1.Pod {
			p := st.MakePod().Namespace("ns").Name("p").UID("p").Req(map[v1.ResourceName]string{kv1.ResourceGPU: "1"}).Obj()
			p.Status.NominatedNodeName = "n1"
			return p
		}()}},
	}, {
		name: "the spreading suspension of the smaller pod failed in this stay: the other moves",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("big", "40Gi", 0), running("small", "20Gi", 0)},
			cks: []*kv1.GPUCheckpoint{func() *kv1.GPUCheckpoint {
				ck := suspension("small", kv1.ReasonSpread, kv1.PhaseFailed)
				ck.Name = checkpointName(running("small", "20Gi", 0))
				return ck
			}()}},
		want: []string{"big"},
	}, {
		name:  "inside its min-runtime a pod stays",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("big", "40Gi", 0), withAnnotation(running("small", "20Gi", 0), kv1.AnnotationMinRuntime, "2h")}},
		want:  []string{"big"},
	}, {
		name: "the default min-runtime applies to every pod",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("big", "40Gi", 0), running("small", "20Gi", 0)},
			cfg: config.ControllerConfiguration{DefaultMinRuntime: metav1.Duration{Duration: 2 * time.Hour}}},
	}, {
		name: "memory of another process on the free GPU: nothing moves",
		setup: setup{gn: func() *kv1.GPUNode {
			gn := gpuNode(80, 80)
			gn.Status.GPUs[1].MemoryUsedBytes = gi
			return gn
		}(), pods: []*v1.Pod{running("a", "20Gi", 0), running("b", "30Gi", 0)}},
	}, {
		name:  "a cordoned node: nothing moves",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("a", "20Gi", 0), running("b", "30Gi", 0)}, cordoned: true},
	}, {
		name: "a pod being bound onto the free GPU (the ledger): nothing moves",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("a", "20Gi", 0), running("b", "30Gi", 0)}, ledger: func(l *gpupod.Ledger) {
			p := running("new", "10Gi", 1)
			p.Status.Phase = v1.PodPending
			l.Reserve(gpupod.OwnerScheduler, p, time.Minute)
		}},
	}, {
		name: "a pod placed a moment ago (the ledger holds it): nothing moves for now",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("big", "40Gi", 0), running("small", "20Gi", 0)}, ledger: func(l *gpupod.Ledger) {
			l.Reserve(gpupod.OwnerScheduler, running("small", "20Gi", 0), time.Minute)
		}},
	}, {
		name: "host memory too small to park the pod between suspend and resume: nothing moves",
		setup: setup{gn: func() *kv1.GPUNode {
			gn := gpuNode(80, 80)
			gn.Status.HostMemory.ParkableBytes = 10 * gi
			return gn
		}(), pods: []*v1.Pod{running("a", "20Gi", 0), running("b", "30Gi", 0)}},
	}, {
		name: "spreadingDelay: a pod placed 10s ago keeps the node as it is",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("big", "40Gi", 0), func() *v1.Pod {
			p := running("small", "20Gi", 0)
			p.Status.StartTime = &metav1.Time{Time: now.Add(-10 * time.Second)}
			return p
		}()}, cfg: config.ControllerConfiguration{SpreadingDelay: metav1.Duration{Duration: 30 * time.Second}}},
	}, {
		name: "spreadingDelay: a move of a pod of the node ended 10s ago",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("big", "40Gi", 0), running("small", "20Gi", 0)},
			cks: []*kv1.GPUCheckpoint{func() *kv1.GPUCheckpoint {
				ck := suspension("big", kv1.ReasonManual, kv1.PhaseFailed)
				ck.Status.CompletionTime = &metav1.Time{Time: now.Add(-10 * time.Second)}
				return ck
			}()},
			cfg: config.ControllerConfiguration{SpreadingDelay: metav1.Duration{Duration: 30 * time.Second}}},
	}, {
		name: "spreadingDelay passed: the smaller moves",
		setup: setup{gn: gpuNode(80, 80), pods: []*v1.Pod{running("big", "40Gi", 0), running("small", "20Gi", 0)},
			cfg: config.ControllerConfiguration{SpreadingDelay: metav1.Duration{Duration: 30 * time.Second}}},
		want: []string{"small"},
	}, {
		name:  "a pod larger than the free GPU stays",
		setup: setup{gn: gpuNode(80, 40), pods: []*v1.Pod{running("a", "50Gi", 0), running("b", "30Gi", 0)}},
		want:  []string{"b"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, evs, _ := run(t, tt.setup)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("pods suspended to spread (-want +got):\n%s", diff)
			}
			if len(evs) != len(tt.want) {
				t.Errorf("events %q, want one per move", evs)
			}
			for _, e := range evs {
				if !strings.Contains(e, EventSpreading) || !strings.Contains(e, "is unused") {
					t.Errorf("event %q", e)
				}
			}
		})
	}
}

// A pod inside its min-runtime, or a node inside its spreadingDelay, brings the node back when
// it ends.
func TestSyncRechecks(t *testing.T) {
	pods := []*v1.Pod{running("a", "20Gi", 0), withAnnotation(running("b", "20Gi", 0), kv1.AnnotationMinRuntime, "90m")}
	pods[0].Annotations[kv1.AnnotationMinRuntime] = "2h"
	_, _, c := run(t, setup{gn: gpuNode(80, 80), pods: pods})
	v := c.view(gpuNode(80, 80), pods, nil, now)
	if want := now.Add(30 * time.Minute); !v.recheck.Equal(want) {
		t.Errorf("recheck at %s, want %s (the earlier end of a min-runtime)", v.recheck, want)
	}
}

func TestSyncRechecksAtSpreadingDelay(t *testing.T) {
	pods := []*v1.Pod{running("a", "20Gi", 0), running("b", "20Gi", 0)}
	pods[1].Status.StartTime = &metav1.Time{Time: now.Add(-10 * time.Second)}
	_, _, c := run(t, setup{gn: gpuNode(80, 80), pods: pods, cfg: config.ControllerConfiguration{SpreadingDelay: metav1.Duration{Duration: 30 * time.Second}}})
	v := c.view(gpuNode(80, 80), pods, nil, now)
	if want := now.Add(20 * time.Second); !v.recheck.Equal(want) || v.unsettled == "" {
		t.Errorf("recheck at %s (unsettled %q), want %s, when b has been resident for spreadingDelay", v.recheck, v.unsettled, want)
	}
}
