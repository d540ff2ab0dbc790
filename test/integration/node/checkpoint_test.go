package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	kimage "github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/test/ci"
	"github.com/kybernate/kybernate/test/integration/framework"
)

// The node-level half of a migration with a real kubelet: the agent checkpoints a pod's
// container through its Checkpoint RPC (containerd, our shim, runc, CRIU), the container stops,
// and a replacement pod with kybernate.io/restore-from, scheduled onto the node by
// kybernate-scheduler, goes on counting at N+1.
func testCheckpointRestore(t *testing.T, c *framework.Cluster, node string) {
	if reason := criuPreflight(t, c); reason != "" {
		ci.Skip(t, "CHECKPOINT/RESTORE CANNOT RUN: "+reason)
	}
	ctx := t.Context()
	images := useNodeContainerd(t, c)

	ns := c.CreateNamespace(t)
	orig := counterPod(ns, "train", node)
	// The checkpoint stops the container; it must not be started again.
	orig.Spec.RestartPolicy = v1.RestartPolicyNever
	if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, orig, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.WaitForPodRunning(ctx, t, c.Client, ns, orig.Name, time.Minute)
	waitForCount(ctx, t, c, ns, orig.Name, 1, 3)

	conn, err := grpc.NewClient("unix://"+agentSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Images live in their namespace's folder: the shim restores a pod only from its own.
	nsDir, err := kimage.NamespaceDir(images, ns)
	if err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(nsDir, "train")
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	resp, err := agentv1.NewNodeAgentServiceClient(conn).Checkpoint(cctx, &agentv1.CheckpointRequest{
		Pod:      &agentv1.PodRef{Namespace: ns, Name: orig.Name, Container: "counter"},
		ImageDir: image,
	}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	t.Logf("checkpoint of %s/%s into %s took %s", ns, orig.Name, resp.GetImageDir(), time.Since(start).Round(10*time.Millisecond))
	framework.WaitForPod(ctx, t, c.Client, ns, orig.Name, time.Minute, "stopped by its checkpoint", func(p *v1.Pod) bool {
		return p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed
	})
	n := waitForCount(ctx, t, c, ns, orig.Name, 1, 3)
	t.Logf("the original stopped at %d", n)

	restored := counterPod(ns, "train-restored", node)
	restored.Annotations = map[string]string{kv1.AnnotationRestoreFrom: image}
	start = time.Now()
	if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, restored, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running := framework.WaitForPodRunning(ctx, t, c.Client, ns, restored.Name, time.Minute)
	t.Logf("restored pod Running %s after create", time.Since(start).Round(100*time.Millisecond))
	if running.Spec.NodeName != node {
		t.Errorf("restored pod on %s, want %s", running.Spec.NodeName, node)
	}
	// Its log begins where the original's ended: N+1, N+2, ...
	waitForCount(ctx, t, c, ns, restored.Name, n+1, n+3)
}

// useNodeContainerd points the agent DaemonSet at this node's containerd, whose socket is not
// at the default /run/containerd/containerd.sock, and gives it a folder for images at the same
// path as on the host (the agent writes metadata.json, runc the CRIU image). Returns the folder.
func useNodeContainerd(t *testing.T, c *framework.Cluster) string {
	t.Helper()
	dir := c.NodeDir()
	sock := filepath.Join(dir, "containerd.sock")
	images := filepath.Join(dir, "checkpoints")
	if err := os.MkdirAll(images, 0o700); err != nil {
		t.Fatal(err)
	}
	const ctr = agentContainer
	// An earlier test of the package may have patched the DaemonSet: kubectl apply -k of the
	// install resets the command but keeps the volumes a JSON patch added. Add what is missing.
	ds, err := c.Client.AppsV1().DaemonSets(systemNamespace).Get(t.Context(), "kybernate-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var ops []patchOp
	if !slices.Contains(ds.Spec.Template.Spec.Containers[0].Command, "--containerd-socket="+sock) {
		// --checkpoint-dir: the shim's checkpointDir (hack/node-up.sh).
		ops = append(ops, agentFlags("--containerd-socket="+sock, "--checkpoint-dir="+images)...)
	}
	if !slices.ContainsFunc(ds.Spec.Template.Spec.Volumes, func(v v1.Volume) bool { return v.Name == "node-containerd" }) {
		ops = append(ops,
			patchOp{"add", "/spec/template/spec/volumes/-", map[string]any{"name": "node-containerd", "hostPath": map[string]any{"path": sock, "type": "Socket"}}},
			patchOp{"add", "/spec/template/spec/volumes/-", map[string]any{"name": "checkpoints", "hostPath": map[string]any{"path": images, "type": "Directory"}}},
			patchOp{"add", ctr + "/volumeMounts/-", map[string]any{"name": "node-containerd", "mountPath": sock}},
			patchOp{"add", ctr + "/volumeMounts/-", map[string]any{"name": "checkpoints", "mountPath": images}})
	}
	if len(ops) > 0 {
		patchAgent(t, c, ops...)
	}
	return images
}

// patchOp is one operation of a JSON patch of the agent's DaemonSet.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// agentContainer is the JSON pointer to the agent's container in its DaemonSet.
const agentContainer = "/spec/template/spec/containers/0"

// agentFlags are the operations that add flags to the agent's command.
func agentFlags(flags ...string) []patchOp {
	ops := make([]patchOp, len(flags))
	for i, f := range flags {
		ops[i] = patchOp{"add", agentContainer + "/command/-", f}
	}
	return ops
}

// patchAgent applies ops to the agent's DaemonSet and waits for the rollout: the agent
// restarts.
func patchAgent(t *testing.T, c *framework.Cluster, ops ...patchOp) {
	t.Helper()
	patch, err := json.Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	c.Kubectl(t, "-n", systemNamespace, "patch", "daemonset", "kybernate-agent", "--type=json", "-p", string(patch))
	c.Kubectl(t, "-n", systemNamespace, "rollout", "status", "daemonset/kybernate-agent", "--timeout=90s")
}

// criuPreflight dumps a host sleep with the CRIU the node's runc uses, bounded by 20 s: on some
// kernel builds criu dump hangs (checkpoint-restore/criu#162), on others it fails. It returns
// why checkpoints cannot work on this kernel (naming it), or "".
func criuPreflight(t *testing.T, c *framework.Cluster) string {
	t.Helper()
	criu := filepath.Join(c.Script(t, "hack/install-runtime.sh"), "criu")
	// A descriptor the test inherited (the lock of `flock LOCK go test`) would be the sleep's
	// too, and CRIU refuses to dump a task that holds a file lock.
	closeInheritedOnExec()
	sleep := exec.Command("sleep", "1000")
	sleep.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sleep.Process.Kill(); _ = sleep.Wait() }()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, criu, "dump", "-t", strconv.Itoa(sleep.Process.Pid), "-D", t.TempDir(), "-o", "dump.log", "--shell-job").CombinedOutput()
	switch {
	case ctx.Err() != nil:
		return fmt.Sprintf("criu dump of a sleep did not finish within 20s on kernel %s (checkpoint-restore/criu#162)", ci.KernelRelease())
	case err != nil:
		return fmt.Sprintf("criu dump of a sleep failed on kernel %s: %v (criu's output: %q)", ci.KernelRelease(), err, bytes.TrimSpace(out))
	}
	return ""
}

// shimOf is the name of the containerd shim above the pod's container process (not its pause
// process) in the host's process tree.
func shimOf(t *testing.T, pod *v1.Pod) string {
	t.Helper()
	pid := strconv.Itoa(podProcess(t, pod))
	for range 10 {
		ppid := parentOf(pid)
		if ppid == "" || ppid == "0" {
			break
		}
		exe, _ := os.Readlink("/proc/" + ppid + "/exe")
		if base := filepath.Base(exe); strings.HasPrefix(base, "containerd-shim") {
			return base
		}
		pid = ppid
	}
	return ""
}

// parentOf is the parent pid of pid, "" when it is gone.
func parentOf(pid string) string {
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return ""
	}
	// The fields after the command, which may hold spaces, in parentheses.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(fields) < 2 {
		return ""
	}
	return fields[1]
}

// closeInheritedOnExec marks the descriptors above stderr that the test process inherited
// close-on-exec, so that its children do not hold them (Go opens its own that way).
func closeInheritedOnExec() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}
