// Package agent tests the node agent in --simulate mode on a real control plane, without the
// scheduler: GPUNode status and node capacity, GPUCheckpoints written by hand (reason Manual),
// valid and invalid, the restore guard across an agent killed with SIGKILL, and suspended pods
// that are deleted.
package agent

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/sim"
	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/util"
)

const (
	nodes       = 3
	gpusPerNode = 2
	slotsPerGPU = 2
)

func TestMain(m *testing.M) {
	framework.MainWithGPUNodes(m, nodes, gpusPerNode)
}

// agent is the simulated agent the tests share; restartAgent replaces it.
var agent *framework.Component

var agentArgs = []string{"--slots-per-gpu", fmt.Sprint(slotsPerGPU),
	"--simulate-checkpoint-rate", "20G", "--simulate-restore-rate", "40G", "--simulate-progress-period", "500ms"}

func setup(t *testing.T) (*framework.Cluster, versioned.Interface) {
	t.Helper()
	c := framework.Get(t)
	kc := c.Kybernate(t)
	if agent == nil {
		agent = c.StartSimulatedAgent(t, agentArgs...)
	}
	framework.WaitForGPUNodes(t.Context(), t, kc, nodes, gpusPerNode, time.Minute)
	return c, kc
}

// Every kwok node gets a GPUNode that says it is simulated, and kybernate.io/gpu capacity.
func TestGPUNodesAndCapacity(t *testing.T) {
	c, kc := setup(t)
	list, err := kc.KybernateV1alpha1().GPUNodes().List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != nodes {
		t.Fatalf("%d GPUNodes, want %d", len(list.Items), nodes)
	}
	for _, gn := range list.Items {
		simulated := false
		for _, cond := range gn.Status.Conditions {
			simulated = simulated || (cond.Type == kv1.GPUNodeSimulated && cond.Status == metav1.ConditionTrue)
		}
		if !simulated {
			t.Errorf("GPUNode %s does not say Simulated=True: %v", gn.Name, gn.Status.Conditions)
		}
		if gn.Status.CheckpointCapability != kv1.CheckpointRemap {
			t.Errorf("GPUNode %s capability %q, want Remap", gn.Name, gn.Status.CheckpointCapability)
		}
		for _, g := range gn.Status.GPUs {
			if g.MemoryTotalBytes != 80<<30 && g.MemoryTotalBytes < 79<<30 {
				t.Errorf("GPU %s of %s has %d bytes, want an 80 GB H100", g.UUID, gn.Name, g.MemoryTotalBytes)
			}
		}
		framework.WaitFor(t.Context(), t, 30*time.Second, "kybernate.io/gpu on node "+gn.Name, func(ctx context.Context) (bool, error) {
			node, err := c.Client.CoreV1().Nodes().Get(ctx, gn.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			q := node.Status.Allocatable[kv1.ResourceGPU]
			return q.Value() == gpusPerNode*slotsPerGPU, nil
		})
	}
}

// boundPod creates a pod bound to the first GPU of node kwok-gpu-<n> as a scheduler would
// leave it, and waits until the agent reports it resident there.
func boundPod(t *testing.T, c *framework.Cluster, kc versioned.Interface, ns, name string, n int) (*v1.Pod, string) {
	t.Helper()
	node := fmt.Sprintf("kwok-gpu-%d", n)
	gn, err := kc.KybernateV1alpha1().GPUNodes().Get(t.Context(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gpu := gn.Status.GPUs[0].UUID
	pod := util.MakePod().Namespace(ns).Name(name).Node(node).GPU(1).GPUMemory("8Gi").
		Annotation(kv1.AnnotationGPUs, gpu).Obj()
	pod, err = c.Client.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	framework.WaitFor(t.Context(), t, 30*time.Second, "pod "+name+" resident on "+gpu, func(ctx context.Context) (bool, error) {
		gn, err := kc.KybernateV1alpha1().GPUNodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, g := range gn.Status.GPUs {
			for _, p := range g.Pods {
				if g.UUID == gpu && p.Namespace == ns && p.Name == name && p.Residency == kv1.Resident {
					return true, nil
				}
			}
		}
		return false, nil
	})
	return pod, gpu
}

func checkpoint(t *testing.T, kc versioned.Interface, ns, name string, spec kv1.GPUCheckpointSpec) *kv1.GPUCheckpoint {
	t.Helper()
	ck := &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: spec}
	if _, err := kc.KybernateV1alpha1().GPUCheckpoints(ns).Create(t.Context(), ck, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *kv1.GPUCheckpoint
	framework.WaitFor(t.Context(), t, time.Minute, "GPUCheckpoint "+name+" to end", func(ctx context.Context) (bool, error) {
		var err error
		got, err = kc.KybernateV1alpha1().GPUCheckpoints(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return got.Status.Phase == kv1.PhaseSucceeded || got.Status.Phase == kv1.PhaseFailed, nil
	})
	return got
}

// A suspend and a resume by hand: timings, bytes, Events, the pod's state and condition, and a
// progress counter that stands still in between.
func TestManualSuspendResume(t *testing.T) {
	c, kc := setup(t)
	ns := c.CreateNamespace(t)
	h := c.Record(t, ns)
	pod, gpu := boundPod(t, c, kc, ns, "worker", 0)
	// A witness on the other node's GPU keeps counting while worker is suspended.
	boundPod(t, c, kc, ns, "witness", 1)
	framework.WaitForPod(t.Context(), t, c.Client, ns, "worker", 30*time.Second, "progress", func(p *v1.Pod) bool {
		return sim.ProgressOf(p) >= time.Second
	})

	ck := checkpoint(t, kc, ns, "pause", kv1.GPUCheckpointSpec{PodName: "worker", PodUID: string(pod.UID), Action: kv1.ActionSuspend, Reason: kv1.ReasonManual})
	if ck.Status.Phase != kv1.PhaseSucceeded {
		t.Fatalf("suspend %s: %s", ck.Status.Phase, ck.Status.Message)
	}
	if want := resource.MustParse("8Gi"); ck.Status.BytesMoved != want.Value() {
		t.Errorf("bytes moved %d, want %d", ck.Status.BytesMoved, want.Value())
	}
	var steps []string
	for _, s := range ck.Status.Steps {
		steps = append(steps, s.Name)
	}
	if strings.Join(steps, ",") != "Lock,Checkpoint" || ck.Status.NodeName != "kwok-gpu-0" || ck.Status.CompletionTime == nil {
		t.Errorf("status %+v, want steps Lock,Checkpoint on kwok-gpu-0 with a completion time", ck.Status)
	}
	suspended, err := c.Client.CoreV1().Pods(ns).Get(t.Context(), "worker", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s := suspended.Annotations[kv1.AnnotationState]; s != string(kv1.PodSuspended) {
		t.Errorf("state %q, want Suspended", s)
	}
	if !podCondition(suspended, kv1.ConditionGPUResident, v1.ConditionFalse) {
		t.Errorf("condition %s not False: %v", kv1.ConditionGPUResident, suspended.Status.Conditions)
	}
	parked := sim.ProgressOf(suspended)
	// A stretch of suspension to observe, measured by the agent's own counting: the witness
	// counts two seconds more, so the agent published progress several times meanwhile.
	witness := sim.ProgressOf(h.Pod("witness"))
	h.WaitPod(t, "witness", 30*time.Second, "two seconds further", func(p *v1.Pod) bool {
		return sim.ProgressOf(p) >= witness+2*time.Second
	})

	ck = checkpoint(t, kc, ns, "go-on", kv1.GPUCheckpointSpec{PodName: "worker", Action: kv1.ActionResume, Reason: kv1.ReasonManual})
	if ck.Status.Phase != kv1.PhaseSucceeded || strings.Join(ck.Status.GPUs, ",") != gpu {
		t.Fatalf("resume %s on %v: %s", ck.Status.Phase, ck.Status.GPUs, ck.Status.Message)
	}
	framework.WaitForPod(t.Context(), t, c.Client, ns, "worker", 30*time.Second, "progress after the resume", func(p *v1.Pod) bool {
		return sim.ProgressOf(p) > parked && podCondition(p, kv1.ConditionGPUResident, v1.ConditionTrue)
	})
	// The counter of worker stood still while it was Suspended, at the parked value.
	if frozen := h.ProgressFrozenWhileSuspended(t, "worker"); frozen < parked || frozen > parked+time.Second {
		t.Errorf("progress froze at %s while suspended, read as %s right after the suspension", frozen, parked)
	}
	// Events are sent asynchronously: wait for both rather than list once.
	seen := map[string]bool{}
	err = framework.Poll(t.Context(), 30*time.Second, func(ctx context.Context) (bool, error) {
		events, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=worker"})
		if err != nil {
			return false, err
		}
		for _, e := range events.Items {
			seen[e.Reason] = true
		}
		return seen["Suspended"] && seen["Resumed"], nil
	})
	if err != nil {
		t.Errorf("want Suspended and Resumed Events on the pod, have %v (%v)", seen, err)
	}
}

func podCondition(p *v1.Pod, typ string, status v1.ConditionStatus) bool {
	for _, c := range p.Status.Conditions {
		if string(c.Type) == typ {
			return c.Status == status
		}
	}
	return false
}

// Invalid GPUCheckpoints end Failed with a message that says what is wrong; nothing moves.
func TestInvalidGPUCheckpoints(t *testing.T) {
	c, kc := setup(t)
	ns := c.CreateNamespace(t)
	pod, _ := boundPod(t, c, kc, ns, "running", 1)
	parked, _ := boundPod(t, c, kc, ns, "parked", 2)
	if ck := checkpoint(t, kc, ns, "park", kv1.GPUCheckpointSpec{PodName: "parked", PodUID: string(parked.UID), Action: kv1.ActionSuspend, Reason: kv1.ReasonManual}); ck.Status.Phase != kv1.PhaseSucceeded {
		t.Fatalf("suspending parked: %s", ck.Status.Message)
	}
	unbound := util.MakePod().Namespace(ns).Name("unbound").GPU(1).SchedulerName("nobody").Obj()
	if _, err := c.Client.CoreV1().Pods(ns).Create(t.Context(), unbound, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		spec    kv1.GPUCheckpointSpec
		wantMsg string
	}{
		{name: "missing-pod", spec: kv1.GPUCheckpointSpec{PodName: "ghost", Action: kv1.ActionSuspend, Reason: kv1.ReasonManual},
			wantMsg: "pod " + ns + "/ghost does not exist"},
		{name: "unbound-pod", spec: kv1.GPUCheckpointSpec{PodName: "unbound", Action: kv1.ActionSuspend, Reason: kv1.ReasonManual},
			wantMsg: "is not bound to a node"},
		{name: "replaced-pod", spec: kv1.GPUCheckpointSpec{PodName: "running", PodUID: "not-" + string(pod.UID), Action: kv1.ActionSuspend, Reason: kv1.ReasonManual},
			wantMsg: "the pod was replaced"},
		{name: "resume-running", spec: kv1.GPUCheckpointSpec{PodName: "running", Action: kv1.ActionResume, Reason: kv1.ReasonManual},
			wantMsg: "is Running"},
		{name: "unknown-gpu", spec: kv1.GPUCheckpointSpec{PodName: "parked", Action: kv1.ActionResume, Reason: kv1.ReasonManual, TargetGPUs: []string{"GPU-00000000-0000-0000-0000-000000000000"}},
			wantMsg: "GPU-00000000-0000-0000-0000-000000000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ck := checkpoint(t, kc, ns, tt.name, tt.spec)
			if ck.Status.Phase != kv1.PhaseFailed || !strings.Contains(ck.Status.Message, tt.wantMsg) {
				t.Errorf("phase %s, message %q; want Failed with %q", ck.Status.Phase, ck.Status.Message, tt.wantMsg)
			}
		})
	}
	// Nothing moved: the running pod goes on, the parked one stays parked.
	framework.WaitForPod(t.Context(), t, c.Client, ns, "running", 30*time.Second, "progress", func(p *v1.Pod) bool {
		return sim.ProgressOf(p) >= time.Second && p.Annotations[kv1.AnnotationState] != string(kv1.PodSuspended)
	})
	if p, err := c.Client.CoreV1().Pods(ns).Get(t.Context(), "parked", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	} else if s := p.Annotations[kv1.AnnotationState]; s != string(kv1.PodSuspended) {
		t.Errorf("parked pod is %q after a refused resume, want Suspended", s)
	}
}
