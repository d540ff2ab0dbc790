package framework

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kybernate/kybernate/test/ci"
)

// realNode is set by MainWithRealNode: the package's cluster gets a real node.
var realNode bool

// MainWithRealNode is Main for a package whose tests need, next to the kwok nodes, a real
// node on this machine (hack/node-up.sh: a kubelet, containerd with CRI, runc, CNI). It needs
// root; outside CI a machine that cannot run the node skips the tests with the reason, in CI
// that fails them. The node is stopped, and the machine cleaned, before the cluster.
func MainWithRealNode(m *testing.M) {
	realNode = true
	Main(m)
}

// RealNode returns the name of the package's real node, or skips the test when the package has
// none (a cluster given by KYBERNATE_KUBECONFIG has one when KYBERNATE_REAL_NODE names it).
func (c *Cluster) RealNode(t testing.TB) string {
	t.Helper()
	if c.realNode == "" {
		ci.Skip(t, "no real node: the package's TestMain must call framework.MainWithRealNode (with KYBERNATE_KUBECONFIG, set KYBERNATE_REAL_NODE)")
	}
	return c.realNode
}

// NodeDir is the real node's folder (hack/node-up.sh's KYBERNATE_NODE_DIR): logs, the
// containerd socket and the kubelet's root.
func (c *Cluster) NodeDir() string {
	if c.Dir == "" {
		return os.Getenv("KYBERNATE_NODE_DIR")
	}
	return filepath.Join(c.Dir, "node")
}

// Script runs a hack/ script for the cluster (its folder and, for the real node, the node's
// folder in the environment) and returns its stdout's last line.
func (c *Cluster) Script(t testing.TB, args ...string) string {
	t.Helper()
	env := []string{"KYBERNATE_NODE_DIR=" + c.NodeDir()}
	if c.Dir != "" {
		env = append(env, "KYBERNATE_CLUSTER_DIR="+c.Dir)
	}
	start := time.Now()
	out, err := runScript(c.Root, env, args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, tail(out, 40))
	}
	t.Logf("%s took %s", strings.Join(args, " "), time.Since(start).Round(100*time.Millisecond))
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// startRealNode runs hack/node-up.sh for the cluster in dir; the node's name, or an error and
// whether it is one to skip on (outside CI).
func startRealNode(root, dir string, keep bool) (string, bool, error) {
	if os.Geteuid() != 0 {
		return "", true, fmt.Errorf("a real node needs root (kubelet, containerd, CNI)")
	}
	env := []string{"KYBERNATE_CLUSTER_DIR=" + dir, "KYBERNATE_NODE_DIR=" + filepath.Join(dir, "node")}
	if !keep {
		// Like the cluster's: a watchdog stops the node and cleans the machine when this test
		// binary exits by any means.
		env = append(env, "KYBERNATE_NODE_OWNER_PID="+strconv.Itoa(os.Getpid()))
	}
	start := time.Now()
	out, err := runScript(root, env, "hack/node-up.sh")
	if err != nil {
		return "", false, fmt.Errorf("hack/node-up.sh: %w\n%s\nlogs: %s", err, tail(out, 40), filepath.Join(dir, "node", "logs"))
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	fmt.Fprintf(os.Stderr, "framework: real node %s Ready in %s\n", lines[len(lines)-1], time.Since(start).Round(100*time.Millisecond))
	return lines[len(lines)-1], false, nil
}

// stopRealNode runs hack/node-down.sh; the node's folder goes when purge is set.
func stopRealNode(root, dir string, purge bool) error {
	args := []string{"hack/node-down.sh"}
	if purge {
		args = append(args, "--purge")
	}
	out, err := runScript(root, []string{"KYBERNATE_CLUSTER_DIR=" + dir, "KYBERNATE_NODE_DIR=" + filepath.Join(dir, "node")}, args...)
	if err != nil {
		return fmt.Errorf("hack/node-down.sh: %w\n%s", err, tail(out, 20))
	}
	return nil
}

// binDir is where hack/build-controlplane.sh put the control plane's binaries.
func (c *Cluster) binDir() string {
	if bin := os.Getenv("KYBERNATE_BIN_DIR"); bin != "" {
		return bin
	}
	cache := os.Getenv("KYBERNATE_CACHE_DIR")
	if cache == "" {
		cache = filepath.Join(c.Root, ".cache")
	}
	return filepath.Join(cache, "bin")
}

// Kubectl runs the cluster's kubectl (built by hack/build-controlplane.sh) as the admin and
// returns its output.
func (c *Cluster) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(c.binDir(), "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	cmd.Dir = c.Root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
