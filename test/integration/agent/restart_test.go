package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/sim"
	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/util"
)

// restartAgent kills the simulated agent with SIGKILL, as a crash or an eviction would, and
// starts a new one.
func restartAgent(t *testing.T, c *framework.Cluster, kc versioned.Interface) {
	t.Helper()
	agent.Kill()
	t.Log("killed the simulated agent (SIGKILL)")
	agent = c.StartSimulatedAgent(t, agentArgs...)
	framework.WaitForGPUNodes(t.Context(), t, kc, nodes, gpusPerNode, time.Minute)
}

// podOnGPU creates a pod with 8Gi bound to GPU index gpu of node, as a scheduler would leave
// it, and waits until it is Running with progress.
func podOnGPU(t *testing.T, c *framework.Cluster, kc versioned.Interface, ns, name, node string, gpu int) (*v1.Pod, string) {
	t.Helper()
	gn, err := kc.KybernateV1alpha1().GPUNodes().Get(t.Context(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	uuid := gn.Status.GPUs[gpu].UUID
	pod := util.MakePod().Namespace(ns).Name(name).Node(node).GPU(1).GPUMemory("8Gi").Annotation(kv1.AnnotationGPUs, uuid).Obj()
	if pod, err = c.Client.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.WaitForPod(t.Context(), t, c.Client, ns, name, 30*time.Second, "progress", func(p *v1.Pod) bool {
		return sim.ProgressOf(p) >= time.Second
	})
	return pod, uuid
}

// stateHistory records every kybernate.io/state a pod shows, from now on.
type stateHistory struct {
	mu     sync.Mutex
	states []string
}

func watchStates(t *testing.T, client kubernetes.Interface, ns, name string) *stateHistory {
	t.Helper()
	w, err := client.CoreV1().Pods(ns).Watch(t.Context(), metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	h := &stateHistory{}
	go func() {
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*v1.Pod)
			if !ok || ev.Type == watch.Error {
				continue
			}
			s := p.Annotations[kv1.AnnotationState]
			h.mu.Lock()
			if s != "" && (len(h.states) == 0 || h.states[len(h.states)-1] != s) {
				h.states = append(h.states, s)
			}
			h.mu.Unlock()
		}
	}()
	t.Cleanup(w.Stop)
	return h
}

func (h *stateHistory) get() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.states)
}

func setForeignMemory(t *testing.T, c *framework.Cluster, node, value string) {
	t.Helper()
	var v any = value
	if value == "" {
		v = nil
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{sim.AnnotationForeignMemory: v}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Nodes().Patch(t.Context(), node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		patch := fmt.Appendf(nil, `{"metadata":{"annotations":{%q:null}}}`, sim.AnnotationForeignMemory)
		_, _ = c.Client.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, patch, metav1.PatchOptions{})
	})
}

// TestRestartAndRestoreGuard: a pod suspended before the agent is killed (SIGKILL) is taken over
// by the new agent. While a process outside Kybernate (simulated) holds the GPU's memory, a
// resume is refused before the driver is called: the GPUCheckpoint ends Failed with reason
// InsufficientGPUMemory, the pod stays Suspended with a ResumeDeferred Event. Once the memory is
// free the same resume succeeds and the pod's progress continues from where it stopped.
func TestRestartAndRestoreGuard(t *testing.T) {
	c, kc := setup(t)
	ns := c.CreateNamespace(t)
	const node = "kwok-gpu-1"
	pod, gpu := podOnGPU(t, c, kc, ns, "worker", node, 1)
	history := watchStates(t, c.Client, ns, "worker")

	ck := checkpoint(t, kc, ns, "pause", kv1.GPUCheckpointSpec{PodName: "worker", PodUID: string(pod.UID), Action: kv1.ActionSuspend, Reason: kv1.ReasonManual})
	if ck.Status.Phase != kv1.PhaseSucceeded {
		t.Fatalf("suspend %s: %s", ck.Status.Phase, ck.Status.Message)
	}
	if len(ck.Status.Footprint) != 1 || ck.Status.Footprint[0].GPU != gpu || ck.Status.Footprint[0].Bytes != 8<<30 {
		t.Errorf("footprint %+v, want one process with 8Gi on %s", ck.Status.Footprint, gpu)
	}
	parked := progress(t, c, ns, "worker")

	// 75Gi taken outside Kybernate leave about 5Gi of the 80Gi GPU: less than 8Gi + 256Mi.
	setForeignMemory(t, c, node, "1=75Gi")
	restartAgent(t, c, kc)

	ck = checkpoint(t, kc, ns, "too-early", kv1.GPUCheckpointSpec{PodName: "worker", Action: kv1.ActionResume, Reason: kv1.ReasonManual})
	cond := findCondition(ck.Status.Conditions, kv1.CheckpointComplete)
	if ck.Status.Phase != kv1.PhaseFailed || cond == nil || cond.Reason != string(engine.CauseInsufficientGPUMemory) ||
		!strings.Contains(ck.Status.Message, "needs 8Gi (the processes' footprint before the checkpoint) + 256Mi margin") {
		t.Fatalf("resume with the GPU full: phase %s, condition %+v, message %q; want Failed, InsufficientGPUMemory, what is needed", ck.Status.Phase, cond, ck.Status.Message)
	}
	t.Logf("refused resume: %s", ck.Status.Message)
	framework.WaitFor(t.Context(), t, 30*time.Second, "ResumeDeferred Event", func(ctx context.Context) (bool, error) {
		evs, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=worker,reason=ResumeDeferred"})
		return err == nil && len(evs.Items) > 0, err
	})
	if p, err := c.Client.CoreV1().Pods(ns).Get(t.Context(), "worker", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	} else if s := p.Annotations[kv1.AnnotationState]; s != string(kv1.PodSuspended) || sim.ProgressOf(p) != parked {
		t.Fatalf("after the refusal: state %q, progress %s; want Suspended, %s", s, sim.ProgressOf(p), parked)
	}

	setForeignMemory(t, c, node, "")
	framework.WaitFor(t.Context(), t, 30*time.Second, "the foreign memory to go", func(ctx context.Context) (bool, error) {
		gn, err := kc.KybernateV1alpha1().GPUNodes().Get(ctx, node, metav1.GetOptions{})
		return err == nil && gn.Status.GPUs[1].MemoryUsedBytes < 1<<30, err
	})
	ck = checkpoint(t, kc, ns, "go-on", kv1.GPUCheckpointSpec{PodName: "worker", Action: kv1.ActionResume, Reason: kv1.ReasonManual})
	if ck.Status.Phase != kv1.PhaseSucceeded || strings.Join(ck.Status.GPUs, ",") != gpu {
		t.Fatalf("resume once the memory is free: %s on %v: %s", ck.Status.Phase, ck.Status.GPUs, ck.Status.Message)
	}
	framework.WaitForPod(t.Context(), t, c.Client, ns, "worker", 30*time.Second, "progress after the resume", func(p *v1.Pod) bool {
		return sim.ProgressOf(p) > parked && podCondition(p, kv1.ConditionGPUResident, v1.ConditionTrue)
	})
	// Every state the pod showed, in order: the refused resume went Resuming -> Suspended.
	want := []string{"Suspending", "Suspended", "Resuming", "Suspended", "Resuming", "Running"}
	if got := history.get(); !slices.Equal(want, got) {
		t.Errorf("pod states %v, want %v", got, want)
	}
}

func findCondition(conds []metav1.Condition, typ string) *metav1.Condition {
	for i := range conds {
		if conds[i].Type == typ {
			return &conds[i]
		}
	}
	return nil
}

// TestDeletedSuspendedPod: a suspended pod that is deleted loses its parked processes, and the
// host memory they held returns: the GPUNode's parkedBytes and suspendedPods drop it.
func TestDeletedSuspendedPod(t *testing.T) {
	c, kc := setup(t)
	ns := c.CreateNamespace(t)
	const node = "kwok-gpu-0"
	pod, _ := podOnGPU(t, c, kc, ns, "doomed", node, 1)
	if ck := checkpoint(t, kc, ns, "park", kv1.GPUCheckpointSpec{PodName: "doomed", PodUID: string(pod.UID), Action: kv1.ActionSuspend, Reason: kv1.ReasonManual}); ck.Status.Phase != kv1.PhaseSucceeded {
		t.Fatalf("suspend: %s", ck.Status.Message)
	}
	parkedOf := func(gn *kv1.GPUNode) (int64, bool) {
		for _, p := range gn.Status.SuspendedPods {
			if p.UID == string(pod.UID) {
				return p.Bytes, true
			}
		}
		return 0, false
	}
	var before int64
	framework.WaitFor(t.Context(), t, 30*time.Second, "the pod parked in the GPUNode", func(ctx context.Context) (bool, error) {
		gn, err := kc.KybernateV1alpha1().GPUNodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		b, ok := parkedOf(gn)
		before = gn.Status.HostMemory.ParkedBytes
		return ok && b == 8<<30 && before >= 8<<30, nil
	})
	if err := c.Client.CoreV1().Pods(ns).Delete(t.Context(), "doomed", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.WaitForPodGone(t.Context(), t, c.Client, ns, "doomed", time.Minute)
	framework.WaitFor(t.Context(), t, 30*time.Second, "the parked memory to return", func(ctx context.Context) (bool, error) {
		gn, err := kc.KybernateV1alpha1().GPUNodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		_, still := parkedOf(gn)
		return !still && gn.Status.HostMemory.ParkedBytes == before-8<<30, nil
	})
}

// progress reads the simulated progress counter of pod name now.
func progress(t *testing.T, c *framework.Cluster, ns, name string) time.Duration {
	t.Helper()
	p, err := c.Client.CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return sim.ProgressOf(p)
}
