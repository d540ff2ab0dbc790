package node

import (
	"context"
	"encoding/base64"
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
	"github.com/kybernate/kybernate/nodeagent/storage"
	"github.com/kybernate/kybernate/test/ci"
	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/objectstore"
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
	t.Run("agent restarted then resumed from object storage", func(t *testing.T) { restartIntoObjectStore(t, c, h, ns, node) })
	if errs := h.Errors(); len(errs) > 0 {
		t.Errorf("history: %v", errs)
	}
}

// spillAndResume runs a counter pod, suspends it, waits for the policy's spill and for
// refusals refused creates, resumes it and checks that the same process counts on.
func spillAndResume(t *testing.T, c *framework.Cluster, h *framework.History, ns, name, node string, refusals int) {
	sp := spillPod(t, c, h, ns, name, node)
	if refusals > 0 {
		// The kubelet's creates are refused, naming the tier, at the intervals its back-off sets.
		refused := waitForEvent(t.Context(), t, c, ns, name, "Failed", "is Suspended with its memory spilled to Disk", refusals, 4*time.Minute)
		for _, e := range refused {
			t.Logf("kubelet: %s x%d, first %s, last %s", e.Reason, e.Count, e.FirstTimestamp.Format(time.RFC3339), e.LastTimestamp.Format(time.RFC3339))
		}
		t.Logf("refusal: %s", refused[0].Message)
		p, err := c.Client.CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cs := p.Status.ContainerStatuses[0]
		t.Logf("while spilled: state %s, phase %s, restartCount %d, waiting %+v", gpupod.StateOf(p), p.Status.Phase, cs.RestartCount, cs.State.Waiting)
	}
	resumeSpilled(t, c, h, sp)
}

// restartIntoObjectStore spills a pod to disk, then restarts the agent with an object store
// (SeaweedFS on the node's bridge address, which pods reach; objects move there after 2 s on
// disk): the new agent takes the spilled pod over (the kubelet's creates meanwhile are refused,
// nothing starts afresh), uploads its image and deletes the disk copy, and a Resume restores the
// same process from object storage.
func restartIntoObjectStore(t *testing.T, c *framework.Cluster, h *framework.History, ns, node string) {
	ctx := t.Context()
	sp := spillPod(t, c, h, ns, "dozer", node)
	secret := startObjectStore(t, c, node)
	before := agentPod(t, c)
	patchAgent(t, c, agentFlags("--object-store-secret="+systemNamespace+"/"+secret, "--disk-tier-idle=2s")...)
	if after := agentPod(t, c); after.UID == before.UID {
		t.Fatalf("the agent pod %s is the one from before the patch: not restarted", after.Name)
	}
	uploaded := waitForEvent(ctx, t, c, ns, sp.pod.Name, "UploadedToObjectStore", "", 1, 2*time.Minute)
	t.Logf("after the agent's restart: %s", uploaded[0].Message)
	waitStorage(t, c, ns, sp.pod.Name, kv1.TierObjectStore)
	resumeSpilled(t, c, h, sp)
	restored := waitForEvent(ctx, t, c, ns, sp.pod.Name, "RestoredFromTier", "", 1, time.Second)
	if !strings.Contains(restored[0].Message, string(kv1.TierObjectStore)) {
		t.Errorf("RestoredFromTier says %q, want it restored from %s", restored[0].Message, kv1.TierObjectStore)
	}
}

// startObjectStore starts SeaweedFS on the node's InternalIP (its bridge address: the agent's
// pod reaches it there, not on loopback) for the rest of the test and returns the name of the
// Secret in the system namespace that says how to reach it.
func startObjectStore(t *testing.T, c *framework.Cluster, node string) string {
	t.Helper()
	ctx := t.Context()
	n, err := c.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var ip string
	for _, a := range n.Status.Addresses {
		if a.Type == v1.NodeInternalIP {
			ip = a.Address
		}
	}
	if ip == "" {
		t.Fatalf("node %s has no InternalIP: %+v", node, n.Status.Addresses)
	}
	if err := objectstore.Build(ctx, c.Root); err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir: weed takes a comma in the subtest's name for a list of folders.
	dir, err := os.MkdirTemp("", "kybernate-seaweedfs-")
	if err != nil {
		t.Fatal(err)
	}
	store, err := objectstore.StartOn(ctx, c.Root, dir, ip)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("weed's log (%s):\n%s", dir, store.Log(30))
		}
		if err := store.Stop(); err != nil {
			t.Error(err)
		}
		if !t.Failed() {
			os.RemoveAll(dir)
		}
	})
	const name = "kybernate-object-store"
	cfg := store.Config
	_, err = c.Client.CoreV1().Secrets(systemNamespace).Create(ctx, &v1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name},
		StringData: map[string]string{storage.SecretEndpoint: cfg.Endpoint, storage.SecretBucket: cfg.Bucket, storage.SecretRegion: cfg.Region,
			storage.SecretPathStyle: "true", "tls": "false", "accessKeyID": cfg.AccessKeyID, "secretAccessKey": cfg.SecretAccessKey},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// agentPod is the running pod of the agent DaemonSet (there is one node).
func agentPod(t *testing.T, c *framework.Cluster) v1.Pod {
	t.Helper()
	list, err := c.Client.CoreV1().Pods(systemNamespace).List(t.Context(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=kybernate-agent"})
	if err != nil {
		t.Fatal(err)
	}
	var running []v1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == v1.PodRunning {
			running = append(running, p)
		}
	}
	if len(running) != 1 {
		t.Fatalf("%d running agent pods, want 1: %v", len(running), podNames(list.Items))
	}
	return running[0]
}

// spilled is a counter pod the tier policy spilled to disk: the token of its process and the
// count it was frozen at.
type spilled struct {
	pod   *v1.Pod
	token string
	n     int
}

// spillPod runs a counter pod, suspends it and waits until the policy spilled it to disk and
// the Suspend's status.storage says so.
func spillPod(t *testing.T, c *framework.Cluster, h *framework.History, ns, name, node string) spilled {
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
	spilledAt := waitForEvent(ctx, t, c, ns, pod.Name, "SpilledToDisk", "", 1, time.Minute)
	t.Logf("spilled by the policy at %s: %s", spilledAt[0].FirstTimestamp.Format(time.RFC3339), spilledAt[0].Message)
	// The agent records the tier in the Suspend's status after the Event: wait for it.
	waitStorage(t, c, ns, name, kv1.TierDisk)

	// Read before the kubelet's retries: it keeps one dead container, and its log, per name.
	frozenToken, n := tokenCountFrozen(ctx, t, c, created)
	if frozenToken != token {
		t.Fatalf("the spilled container's log has token %q, want %q", frozenToken, token)
	}
	t.Logf("the container was frozen at %d", n)
	return spilled{pod: created, token: token, n: n}
}

// waitStorage waits until the pod's Suspend (<name>-suspend) says its image is in tier, with
// its size.
func waitStorage(t *testing.T, c *framework.Cluster, ns, name string, tier kv1.StorageTier) {
	t.Helper()
	var st *kv1.CheckpointStorage
	err := framework.Poll(t.Context(), time.Minute, func(ctx context.Context) (bool, error) {
		ck, err := c.Kybernate(t).KybernateV1alpha1().GPUCheckpoints(ns).Get(ctx, name+"-suspend", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		st = ck.Status.Storage
		return st != nil && st.Tier == tier && st.StoredBytes != 0, nil
	})
	if err != nil {
		t.Errorf("status.storage of the Suspend %+v, want tier %s with the image's size (%v)", st, tier, err)
	}
}

// resumeSpilled resumes a spilled pod and checks that its process counts on from where it was
// frozen, and that its history shows one suspension, Suspended throughout the spill.
func resumeSpilled(t *testing.T, c *framework.Cluster, h *framework.History, sp spilled) {
	ctx := t.Context()
	ns, name := sp.pod.Namespace, sp.pod.Name
	start := time.Now()
	resume := &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-resume"},
		Spec: kv1.GPUCheckpointSpec{PodName: name, Action: kv1.ActionResume, Reason: kv1.ReasonManual}}
	if _, err := c.Kybernate(t).KybernateV1alpha1().GPUCheckpoints(ns).Create(ctx, resume, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.WaitPod(t, name, 12*time.Minute, "Running again", func(p *v1.Pod) bool { return gpupod.StateOf(p) == kv1.PodRunning })
	t.Logf("resume latency (Resume created -> pod Running): %s", time.Since(start).Round(100*time.Millisecond))
	restored := waitForEvent(ctx, t, c, ns, name, "RestoredFromTier", "", 1, time.Minute)
	t.Logf("%s", restored[0].Message)
	// The same process: its token, counting on from where it was frozen.
	tok, first := tokenCount(ctx, t, c, ns, name, sp.n+3)
	if tok != sp.token || first != sp.n+1 {
		t.Errorf("after the resume the log begins %q %d, want the token %q at %d (the same process, N+1)", tok, first, sp.token, sp.n+1)
	}
	p, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	refused := waitForEvent(ctx, t, c, ns, name, "Failed", "", 0, time.Second)
	count := 0
	for _, e := range refused {
		count += max(int(e.Count), 1)
	}
	t.Logf("after the resume: restartCount %d, %d refused creates in all", p.Status.ContainerStatuses[0].RestartCount, count)

	// The whole history: from the suspend until the Resume the pod never left Suspended.
	var states []kv1.PodGPUState
	for _, v := range h.PodVersions(name) {
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
	ops := agentFlags("--disk-tier-dir="+dir, "--parked-memory-high-water=1", "--tier-interval=1s", "--spilled-create-hold="+spilledCreateHold.String())
	patchAgent(t, c, append(ops,
		patchOp{"add", "/spec/template/spec/volumes/-", map[string]any{"name": "tiers", "hostPath": map[string]any{"path": dir, "type": "Directory"}}},
		patchOp{"add", agentContainer + "/volumeMounts/-", map[string]any{"name": "tiers", "mountPath": dir}})...)
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
		if strings.HasPrefix(string(raw), "unable to retrieve container logs") {
			// The kubelet's answer, as the log, while the restored container's log is not
			// open to it yet: ask again.
			return false, nil
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
