package ecosystem

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	logsapi "k8s.io/component-base/logs/api/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cli"
	"github.com/kybernate/kybernate/test/integration/framework"
)

func init() {
	// Each run of the plugin's command applies the same logging configuration again.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
}

// kubectlKybernate runs the plugin's command with args against the cluster and returns its
// output and error.
func kubectlKybernate(t *testing.T, e *env, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := cli.NewCommand(genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
	cmd.SetArgs(append([]string{"--kubeconfig", e.c.Kubeconfig}, args...))
	err := cmd.ExecuteContext(t.Context())
	t.Logf("kubectl kybernate %s:\n%s%s", strings.Join(args, " "), out.String(), errOut.String())
	return out.String(), err
}

func mustRun(t *testing.T, e *env, args ...string) string {
	t.Helper()
	out, err := kubectlKybernate(t, e, args...)
	if err != nil {
		t.Fatalf("kubectl kybernate %v: %v", args, err)
	}
	return out
}

func decode[T any](t *testing.T, out string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("decoding -o json: %v\n%s", err, out)
	}
	return v
}

const node0 = "kwok-gpu-0"

// gpus shows resident and suspended pods; suspend and resume (onto the other GPU) go through
// GPUCheckpoints with reason Manual that the agent carries out; why and top explain the pod.
func TestPluginSuspendResume(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	ns := e.c.CreateNamespace(t)
	for _, p := range []struct{ name, mem string }{{"a", "20Gi"}, {"b", "30Gi"}} {
		if _, err := e.c.Client.CoreV1().Pods(ns).Create(ctx, gpuPod(ns, p.name, node0, low, p.mem), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		framework.WaitForPodRunning(ctx, t, e.c.Client, ns, p.name, time.Minute)
	}
	waitGPUs(t, e, "both pods resident", func(n cli.NodeGPUs) bool {
		return len(residentOf(n, ns, "a")) == 1 && len(residentOf(n, ns, "b")) == 1
	})
	table := mustRun(t, e, "gpus")
	for _, want := range []string{node0 + "*", ns + "/a", ns + "/b", "* simulated GPUs"} {
		if !strings.Contains(table, want) {
			t.Errorf("gpus table lacks %q:\n%s", want, table)
		}
	}
	b, err := e.c.Client.CoreV1().Pods(ns).Get(ctx, "b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	from := b.Annotations[kv1.AnnotationGPUs]

	out := mustRun(t, e, "suspend", "b", "-n", ns)
	if !strings.Contains(out, "pod "+ns+"/b suspended on node "+node0) {
		t.Errorf("suspend output:\n%s", out)
	}
	checkCheckpoint(t, e, ns, "b", kv1.ActionSuspend, nil)
	n := waitGPUs(t, e, "b parked in host memory", func(n cli.NodeGPUs) bool { return len(suspendedOf(n, ns, "b")) == 1 })
	if s := suspendedOf(n, ns, "b")[0]; s.ParkedBytes != 30<<30 || s.Tier != cli.TierHostMemory {
		t.Errorf("suspended b: %+v, want 30Gi parked in HostMemory", s)
	}
	why := decode[cli.Why](t, mustRun(t, e, "why", "b", "-n", ns, "-o", "json"))
	if why.State != string(kv1.PodSuspended) || why.Suspension == nil || why.Suspension.Reason != kv1.ReasonManual ||
		!strings.Contains(why.Summary, "kubectl kybernate resume b") {
		t.Errorf("why b after a manual suspend: %+v", why)
	}
	// In time order; the core API's events have whole seconds.
	if !slices.IsSortedFunc(why.Events, func(a, b cli.EventView) int {
		return a.Time.Truncate(time.Second).Compare(b.Time.Truncate(time.Second))
	}) ||
		!slices.ContainsFunc(why.Events, func(ev cli.EventView) bool { return ev.Reason == "Suspended" }) {
		t.Errorf("why b events not in time order or without Suspended: %+v", why.Events)
	}

	other := ""
	for _, g := range n.GPUs {
		if g.UUID != from {
			other = g.UUID
		}
	}
	if _, err := kubectlKybernate(t, e, "resume", "b", "-n", ns, "--gpu", "GPU-00000000-0000-0000-0000-000000000000"); err == nil ||
		!strings.Contains(err.Error(), "not a GPU of node") {
		t.Errorf("resume onto a GPU of no node: err %v, want a refusal", err)
	}
	out = mustRun(t, e, "resume", "b", "-n", ns, "--gpu", other)
	if !strings.Contains(out, "pod "+ns+"/b resumed on node "+node0) {
		t.Errorf("resume output:\n%s", out)
	}
	checkCheckpoint(t, e, ns, "b", kv1.ActionResume, []string{other})
	framework.WaitForPod(ctx, t, e.c.Client, ns, "b", 30*time.Second, "running on "+other, func(p *v1.Pod) bool {
		return p.Annotations[kv1.AnnotationState] == string(kv1.PodRunning) && p.Annotations[kv1.AnnotationGPUs] == other
	})
	if _, err := kubectlKybernate(t, e, "resume", "b", "-n", ns); err == nil || !strings.Contains(err.Error(), "only a Suspended pod") {
		t.Errorf("resume of a running pod: err %v, want a refusal", err)
	}

	top := decode[[]cli.PodGPUTime](t, mustRun(t, e, "top", "-n", ns, "-o", "json"))
	byName := map[string]cli.PodGPUTime{}
	for _, r := range top {
		byName[r.Name] = r
	}
	if byName["b"].Suspensions != 1 || byName["a"].Suspensions != 0 || byName["a"].GPUTime.Duration <= 0 || byName["b"].GPUTime.Duration <= 0 {
		t.Errorf("top: %+v", top)
	}
	if wide := mustRun(t, e, "top", "-n", ns, "-o", "wide"); !strings.Contains(wide, "SUSPENSIONS") {
		t.Errorf("top -o wide has no SUSPENSIONS column:\n%s", wide)
	}
}

// A pod that fits on no GPU: why names the scheduler's last failure; suspend refuses it.
func TestPluginWhyPending(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	ns := e.c.CreateNamespace(t)
	if _, err := e.c.Client.CoreV1().Pods(ns).Create(ctx, gpuPod(ns, "huge", node0, low, "100Gi"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var why cli.Why
	framework.WaitFor(ctx, t, time.Minute, "a scheduling failure of huge", func(context.Context) (bool, error) {
		out, err := kubectlKybernate(t, e, "why", "huge", "-n", ns, "-o", "json")
		if err != nil {
			return false, err
		}
		why = decode[cli.Why](t, out)
		return why.LastSchedulingFailure != nil, nil
	})
	if why.State != "Pending" || !strings.HasPrefix(why.Summary, "Pending: not placed: ") {
		t.Errorf("why huge: %+v", why)
	}
	if _, err := kubectlKybernate(t, e, "suspend", "huge", "-n", ns); err == nil || !strings.Contains(err.Error(), "not bound to a node") {
		t.Errorf("suspend of a pending pod: err %v, want a refusal", err)
	}
	if _, err := kubectlKybernate(t, e, "gpus", "-o", "table"); err == nil {
		t.Error("gpus -o table: no error for an unknown format")
	}
}

// waitGPUs waits until node0's GPUs satisfy cond and returns them.
func waitGPUs(t *testing.T, e *env, what string, cond func(cli.NodeGPUs) bool) cli.NodeGPUs {
	t.Helper()
	var n cli.NodeGPUs
	framework.WaitFor(t.Context(), t, 30*time.Second, what, func(ctx context.Context) (bool, error) {
		nodes, err := cli.ListGPUs(ctx, e.kc, []string{node0})
		if err != nil {
			return false, err
		}
		n = nodes[0]
		return cond(n), nil
	})
	if !n.Simulated {
		t.Errorf("%s is not reported simulated", node0)
	}
	return n
}

func residentOf(n cli.NodeGPUs, ns, name string) []cli.PodOnGPU {
	var out []cli.PodOnGPU
	for _, g := range n.GPUs {
		for _, p := range g.Resident {
			if p.Namespace == ns && p.Name == name {
				out = append(out, p)
			}
		}
	}
	return out
}

func suspendedOf(n cli.NodeGPUs, ns, name string) []cli.SuspendedPod {
	var out []cli.SuspendedPod
	for _, g := range n.GPUs {
		for _, p := range g.Suspended {
			if p.Namespace == ns && p.Name == name {
				out = append(out, p)
			}
		}
	}
	return out
}

// checkCheckpoint checks that the pod has a succeeded GPUCheckpoint of the action with reason
// Manual, as the scheduler would have written it (owner, pod UID, target GPUs).
func checkCheckpoint(t *testing.T, e *env, ns, pod string, action kv1.CheckpointAction, targets []string) {
	t.Helper()
	list, err := e.kc.KybernateV1alpha1().GPUCheckpoints(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ck := range list.Items {
		if ck.Spec.PodName != pod || ck.Spec.Action != action {
			continue
		}
		if ck.Spec.Reason != kv1.ReasonManual || ck.Status.Phase != kv1.PhaseSucceeded || ck.Spec.PodUID == "" ||
			len(ck.OwnerReferences) != 1 || !slices.Equal(ck.Spec.TargetGPUs, targets) {
			t.Errorf("GPUCheckpoint %s: spec %+v, phase %s, owners %v", ck.Name, ck.Spec, ck.Status.Phase, ck.OwnerReferences)
		}
		return
	}
	t.Errorf("no %s GPUCheckpoint for pod %s", action, pod)
}

// kubectl finds the built plugin on PATH and runs it as `kubectl kybernate`.
func TestKubectlRunsPlugin(t *testing.T) {
	e := setup(t)
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "kubectl-kybernate"), "./cli/cmd/kubectl-kybernate")
	build.Dir = e.c.Root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cli/cmd/kubectl-kybernate: %v\n%s", err, out)
	}
	// kubectl takes no flags before a plugin's name: the kubeconfig comes from $KUBECONFIG.
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("KUBECONFIG", e.c.Kubeconfig)
	kubectl := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(t.Context(), kubectlPath(e), args...).Output()
		if err != nil {
			t.Fatalf("kubectl %v: %v", args, err)
		}
		return string(out)
	}
	got := decode[[]cli.NodeGPUs](t, kubectl("kybernate", "gpus", "-o", "json"))
	if len(got) != nodes {
		t.Fatalf("kubectl kybernate gpus lists %d nodes, want %d", len(got), nodes)
	}
	for _, n := range got {
		if !n.Simulated || len(n.GPUs) != gpusPerNode {
			t.Errorf("node %s: simulated %v, %d GPUs; want simulated with %d", n.Node, n.Simulated, len(n.GPUs), gpusPerNode)
		}
	}
	if help := kubectl("kybernate", "--help"); !strings.Contains(help, "kubectl kybernate [command]") {
		t.Errorf("kubectl kybernate --help does not name the plugin as kubectl does:\n%s", help)
	}
}

// kubectlPath is the cluster's kubectl, built by hack/build-controlplane.sh.
func kubectlPath(e *env) string {
	bin := os.Getenv("KYBERNATE_BIN_DIR")
	if bin == "" {
		cache := os.Getenv("KYBERNATE_CACHE_DIR")
		if cache == "" {
			cache = filepath.Join(e.c.Root, ".cache")
		}
		bin = filepath.Join(cache, "bin")
	}
	return filepath.Join(bin, "kubectl")
}
