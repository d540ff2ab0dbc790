package node

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/test/ci"
	"github.com/kybernate/kybernate/test/integration/framework"
)

// spilledCreateHold is the agent's --spilled-create-hold in this test: short, so that the
// kubelet's refused creates come within a minute.
const spilledCreateHold = 15 * time.Second

// The tier policy on a real node: a pod without GPUs is suspended (its container frozen);
// with --parked-memory-high-water=1 (any parked memory passes it) the policy, not a Spill
// RPC, spills the container to disk: CRIU dump, encrypted image, container stopped. The
// kubelet creates the container again at once and after each refusal; every create is refused
// with a reason that names the pod's tier, and the pod stays Suspended throughout (its whole
// history audited), its Suspend's status.storage saying Disk. A Resume then lets the next create
// restore the container: the same process (the token its shell drew at start) counts on at
// N+1; the token holds the shell's PID in the pod's PID namespace too, which the restore keeps.
// The first pod is resumed after three refused creates (the Resume then waits for the
// kubelet's back-off); the second at once after its spill, while the kubelet's first create
// waits in the agent (--spilled-create-hold). Resume latencies and the kubelet's retries are
// logged.
func TestTierPolicySpillsAndResumes(t *testing.T) {
	c := framework.Get(t)
	node := c.RealNode(t)
	if !t.Run("install", func(t *testing.T) { testInstall(t, c, node) }) {
		return
	}
	if reason := criuPreflight(t, c); reason != "" {
		ci.Skip(t, "CHECKPOINT/RESTORE CANNOT RUN: "+reason)
	}
	ctx := t.Context()
	useNodeContainerd(t, c)
	useTierPolicy(t, c)
	ns := c.CreateNamespace(t)
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i*7 + 3)
	}
	if _, err := c.Client.CoreV1().Secrets(ns).Create(ctx, &v1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "kybernate-image-key"},
		StringData: map[string]string{"key": base64.StdEncoding.EncodeToString(key)}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h := c.Record(t, ns)
	t.Run("resume after refused creates", func(t *testing.T) { spillAndResume(t, c, h, ns, "sleeper", node, 3) })
	t.Run("resume while a create waits", func(t *testing.T) { spillAndResume(t, c, h, ns, "napper", node, 0) })
	if errs := h.Errors(); len(errs) > 0 {
		t.Errorf("history: %v", errs)
	}
}

// spillAndResume runs a counter pod, suspends it, waits for the policy's spill and for
// refusals refused creates, resumes it and checks that the same process counts on.
func spillAndResume(t *testing.T, c *framework.Cluster, h *framework.History, ns, name, node string, refusals int) {
	ctx := t.Context()
	pod := counterPod(ns, name, node)
	// A kybernate.io/ annotation: the shim asks the agent at the container's create.
	pod.Annotations = map[string]string{kv1.AnnotationPreemption: "Suspend"}
	// The token: a random uuid drawn at start, kept in the shell's memory only, and the
	// shell's PID.
	pod.Spec.Containers[0].Command = []string{"/bin/sh", "-c", "t=$(cat /proc/sys/kernel/random/uuid).pid$$; i=0; while :; do i=$((i+1)); echo \"$t $i\"; sleep 1; done"}
	if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	created := framework.WaitForPodRunning(ctx, t, c.Client, ns, pod.Name, time.Minute)
	token, _ := tokenCount(ctx, t, c, ns, pod.Name, 3)

	kc := c.Kybernate(t)
	suspend := &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-suspend"},
		Spec: kv1.GPUCheckpointSpec{PodName: pod.Name, Action: kv1.ActionSuspend, Reason: kv1.ReasonManual}}
	if _, err := kc.KybernateV1alpha1().GPUCheckpoints(ns).Create(ctx, suspend, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.WaitPod(t, pod.Name, time.Minute, "Suspended", func(p *v1.Pod) bool { return gpupod.StateOf(p) == kv1.PodSuspended })
	spilled := waitForEvent(ctx, t, c, ns, pod.Name, "SpilledToDisk", "", 1, time.Minute)
	t.Logf("spilled by the policy at %s: %s", spilled[0].FirstTimestamp.Format(time.RFC3339), spilled[0].Message)
	// The agent records the tier in the Suspend's status after the Event: wait for it.
	var st *kv1.CheckpointStorage
	err := framework.Poll(ctx, 30*time.Second, func(ctx context.Context) (bool, error) {
		ck, err := kc.KybernateV1alpha1().GPUCheckpoints(ns).Get(ctx, suspend.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		st = ck.Status.Storage
		return st != nil && st.Tier == kv1.TierDisk && st.StoredBytes != 0, nil
	})
	if err != nil {
		t.Errorf("status.storage of the Suspend %+v, want tier Disk with the image's size (%v)", st, err)
	}

	// Read before the kubelet's retries: it keeps one dead container, and its log, per name.
	frozenToken, n := tokenCountFrozen(ctx, t, c, created)
	if frozenToken != token {
		t.Fatalf("the spilled container's log has token %q, want %q", frozenToken, token)
	}
	t.Logf("the container was frozen at %d", n)

	if refusals > 0 {
		// The kubelet's creates are refused, naming the tier, at the intervals its back-off sets.
		refused := waitForEvent(ctx, t, c, ns, pod.Name, "Failed", "is Suspended with its memory spilled to Disk", refusals, 4*time.Minute)
		for _, e := range refused {
			t.Logf("kubelet: %s x%d, first %s, last %s", e.Reason, e.Count, e.FirstTimestamp.Format(time.RFC3339), e.LastTimestamp.Format(time.RFC3339))
		}
		t.Logf("refusal: %s", refused[0].Message)
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cs := p.Status.ContainerStatuses[0]
		t.Logf("while spilled: state %s, phase %s, restartCount %d, waiting %+v", gpupod.StateOf(p), p.Status.Phase, cs.RestartCount, cs.State.Waiting)
	}

	start := time.Now()
	resume := &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-resume"},
		Spec: kv1.GPUCheckpointSpec{PodName: pod.Name, Action: kv1.ActionResume, Reason: kv1.ReasonManual}}
	if _, err := kc.KybernateV1alpha1().GPUCheckpoints(ns).Create(ctx, resume, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.WaitPod(t, pod.Name, 12*time.Minute, "Running again", func(p *v1.Pod) bool { return gpupod.StateOf(p) == kv1.PodRunning })
	t.Logf("resume latency (Resume created -> pod Running): %s", time.Since(start).Round(100*time.Millisecond))
	restored := waitForEvent(ctx, t, c, ns, pod.Name, "RestoredFromTier", "", 1, time.Minute)
	t.Logf("%s", restored[0].Message)
	// The same process: its token, counting on from where it was frozen.
	tok, first := tokenCount(ctx, t, c, ns, pod.Name, n+3)
	if tok != token || first != n+1 {
		t.Errorf("after the resume the log begins %q %d, want the token %q at %d (the same process, N+1)", tok, first, token, n+1)
	}
	p, err := c.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	refused := waitForEvent(ctx, t, c, ns, pod.Name, "Failed", "", 0, time.Second)
	count := 0
	for _, e := range refused {
		count += max(int(e.Count), 1)
	}
	t.Logf("after the resume: restartCount %d, %d refused creates in all", p.Status.ContainerStatuses[0].RestartCount, count)

	// The whole history: from the suspend until the Resume the pod never left Suspended.
	var states []kv1.PodGPUState
	for _, v := range h.PodVersions(pod.Name) {
		if s := gpupod.StateOf(v.Pod); len(states) == 0 || states[len(states)-1] != s {
			states = append(states, s)
		}
	}
	want := []kv1.PodGPUState{kv1.PodSuspending, kv1.PodSuspended, kv1.PodResuming, kv1.PodRunning}
	if len(states) < len(want) || !slices.Equal(states[len(states)-len(want):], want) || strings.Count(fmt.Sprint(states), string(kv1.PodSuspending)) != 1 {
		t.Errorf("states %v, want them to end %v, with one suspend (Suspended throughout the spill)", states, want)
	}
}

// useTierPolicy turns the tier policy on for the node's agent: the disk tier in a folder of
// the node, the mark at one byte.
func useTierPolicy(t *testing.T, c *framework.Cluster) {
	t.Helper()
	dir := filepath.Join(c.NodeDir(), "tiers")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	type op struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value any    `json:"value"`
	}
	const ctr = "/spec/template/spec/containers/0"
	patch, err := json.Marshal([]op{
		{"add", ctr + "/command/-", "--disk-tier-dir=" + dir},
		{"add", ctr + "/command/-", "--parked-memory-high-water=1"},
		{"add", ctr + "/command/-", "--tier-interval=1s"},
		{"add", ctr + "/command/-", "--spilled-create-hold=" + spilledCreateHold.String()},
		{"add", "/spec/template/spec/volumes/-", map[string]any{"name": "tiers", "hostPath": map[string]any{"path": dir, "type": "Directory"}}},
		{"add", ctr + "/volumeMounts/-", map[string]any{"name": "tiers", "mountPath": dir}},
	})
	if err != nil {
		t.Fatal(err)
	}
	c.Kubectl(t, "-n", systemNamespace, "patch", "daemonset", "kybernate-agent", "--type=json", "-p", string(patch))
	c.Kubectl(t, "-n", systemNamespace, "rollout", "status", "daemonset/kybernate-agent", "--timeout=90s")
}

// waitForEvent waits for Events of reason on the pod, whose message contains msg, counted
// (Event.Count) at least n times, and returns them.
func waitForEvent(ctx context.Context, t *testing.T, c *framework.Cluster, ns, pod, reason, msg string, n int, timeout time.Duration) []v1.Event {
	t.Helper()
	var out []v1.Event
	framework.WaitFor(ctx, t, timeout, fmt.Sprintf("%d Events %s (%q) on %s", n, reason, msg, pod), func(ctx context.Context) (bool, error) {
		list, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod + ",reason=" + reason})
		if err != nil {
			return false, client(err)
		}
		out = out[:0]
		count := 0
		for _, e := range list.Items {
			if strings.Contains(e.Message, msg) {
				out = append(out, e)
				count += max(int(e.Count), 1)
			}
		}
		return count >= n, nil
	})
	return out
}

// tokenCount waits until the pod's current log counts to at least want; the log must be
// "TOKEN N" lines, one token, counting up by one. It returns the token and the first count.
func tokenCount(ctx context.Context, t *testing.T, c *framework.Cluster, ns, name string, want int) (string, int) {
	t.Helper()
	var token string
	first := 0
	framework.WaitFor(ctx, t, 30*time.Second, fmt.Sprintf("pod %s/%s counting to %d", ns, name, want), func(ctx context.Context) (bool, error) {
		raw, err := c.Client.CoreV1().Pods(ns).GetLogs(name, &v1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			return false, client(err)
		}
		tok, f, last, err := parseTokenLog(string(raw))
		if err != nil {
			return false, err
		}
		token, first = tok, f
		return last >= want, nil
	})
	return token, first
}

// tokenCountFrozen reads the log of the pod's first container (the spilled one) from the
// kubelet's log folder on the node (CRI log lines "TIME STREAM TAG MESSAGE"): its token and
// last count. The container is stopped, so the file is complete.
func tokenCountFrozen(ctx context.Context, t *testing.T, c *framework.Cluster, pod *v1.Pod) (string, int) {
	t.Helper()
	path := filepath.Join(c.NodeDir(), "pod-logs", pod.Namespace+"_"+pod.Name+"_"+string(pod.UID), pod.Spec.Containers[0].Name, "0.log")
	var token string
	last := 0
	framework.WaitFor(ctx, t, 30*time.Second, "the spilled container's log "+path, func(ctx context.Context) (bool, error) {
		data, err := os.ReadFile(path)
		if err != nil {
			return false, nil
		}
		var msgs []string
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if f := strings.SplitN(line, " ", 4); len(f) == 4 {
				msgs = append(msgs, f[3])
			}
		}
		tok, _, l, err := parseTokenLog(strings.Join(msgs, "\n"))
		if err != nil {
			return false, err
		}
		token, last = tok, l
		return l > 0, nil
	})
	return token, last
}

func parseTokenLog(raw string) (token string, first, last int, err error) {
	for i, line := range strings.Split(strings.TrimSpace(raw), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return "", 0, 0, fmt.Errorf("line %d of the log is %q, want TOKEN N", i+1, line)
		}
		n, aerr := strconv.Atoi(f[1])
		switch {
		case aerr != nil:
			return "", 0, 0, fmt.Errorf("line %d of the log is %q, want TOKEN N", i+1, line)
		case i == 0:
			token, first = f[0], n
		case f[0] != token || n != last+1:
			return "", 0, 0, fmt.Errorf("line %d of the log is %q after %s %d: want one token counting up by one", i+1, line, token, last)
		}
		last = n
	}
	return token, first, last, nil
}
