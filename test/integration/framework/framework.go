// Package framework runs integration tests against a real control plane: etcd,
// kube-apiserver, kube-controller-manager, the default kube-scheduler and kwok with
// fake GPU nodes, all built from the Go module proxy and started by the hack/
// scripts. A test package starts one cluster for all its tests:
//
//	func TestMain(m *testing.M) { framework.Main(m) }
//
//	func TestX(t *testing.T) {
//		c := framework.Get(t)
//		ns := c.CreateNamespace(t)
//		...
//	}
//
// Environment:
//
//	KYBERNATE_KUBECONFIG        use this running cluster; start and stop nothing
//	KYBERNATE_REAL_NODE         with KYBERNATE_KUBECONFIG: the cluster's real node (MainWithRealNode)
//	KYBERNATE_KEEP_CLUSTER=true leave the started cluster running (its folder is printed)
//	KYBERNATE_NODES, KYBERNATE_GPUS_PER_NODE, KYBERNATE_GPU_MODELS  passed to cluster-up
//	CI=true                     (test/ci) a control plane that cannot be built, or a real
//	                            node that cannot start, fails the tests instead of skipping them;
//	                            Kybernate's binaries are built with -race
//	KYBERNATE_RACE=true|false   build them with -race, or not, whatever CI says; a data race
//	                            in a component's log fails the package
package framework

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kybernate/kybernate/test/ci"
)

// Cluster is a running control plane and clients for it.
type Cluster struct {
	// Root is the repository root.
	Root string
	// Dir is the cluster's folder (PKI, kubeconfigs, logs); empty for a cluster
	// given by KYBERNATE_KUBECONFIG.
	Dir string
	// Kubeconfig is the admin kubeconfig (system:masters).
	Kubeconfig string
	// Nodes is the number of kwok GPU nodes cluster-up created; 0 when unknown.
	Nodes int
	// realNode is the name of the real node of MainWithRealNode.
	realNode string

	Config  *rest.Config
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
}

var (
	cluster *Cluster
	// skipReason is set when the control plane could not be built outside CI.
	skipReason string
)

// Get returns the package's cluster, or skips the test when the control plane
// could not be built (never in CI: Main fails there instead).
func Get(t testing.TB) *Cluster {
	t.Helper()
	if skipReason != "" {
		ci.Skip(t, skipReason)
	}
	if cluster == nil {
		t.Fatal("framework: no cluster; call framework.Main(m) from TestMain")
	}
	return cluster
}

// KubeconfigFor returns the path of another identity's kubeconfig in the cluster's
// folder ("kube-scheduler", "kube-controller-manager", "kwok", "kubelet").
func (c *Cluster) KubeconfigFor(name string) string {
	if c.Dir == "" {
		return ""
	}
	return filepath.Join(c.Dir, name+".kubeconfig")
}

// Main starts a cluster for the test package, runs its tests and stops the
// cluster again; for TestMain. It does not return.
func Main(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	root, err := repoRoot()
	if err != nil {
		fmt.Fprintf(os.Stderr, "framework: %v\n", err)
		return 1
	}
	if kubeconfig := os.Getenv("KYBERNATE_KUBECONFIG"); kubeconfig != "" {
		return runOnCluster(m, root, kubeconfig)
	}

	// The build prints as it goes: a cold one takes minutes (make controlplane
	// first, or give go test a -timeout that covers it).
	if err := build(root); err != nil {
		msg := fmt.Sprintf("framework: cannot build the control plane: hack/build-controlplane.sh: %v", err)
		if ci.Enabled() {
			fmt.Fprintln(os.Stderr, msg+"\nCI is set: failing instead of skipping")
			return 1
		}
		fmt.Fprintln(os.Stderr, msg)
		skipReason = "integration tests need the control plane from hack/build-controlplane.sh, which failed to build (see the log above); in CI this is a failure"
		return m.Run()
	}

	keep := boolEnv("KYBERNATE_KEEP_CLUSTER")
	dir, err := clusterUp(root, keep)
	if err != nil {
		fmt.Fprintf(os.Stderr, "framework: %v\n", err)
		return 1
	}
	nodes := 4
	if n, err := strconv.Atoi(os.Getenv("KYBERNATE_NODES")); err == nil {
		nodes = n
	}
	cluster, err = connect(root, dir, filepath.Join(dir, "admin.kubeconfig"), nodes)
	code, nodeStarted := 1, false
	if err != nil {
		fmt.Fprintf(os.Stderr, "framework: %v\n", err)
	} else {
		code, nodeStarted = runTests(m, root, dir, keep)
	}
	// Before the cluster they talk to goes away.
	if err := stopComponents(); err != nil {
		fmt.Fprintf(os.Stderr, "framework: %v\n", err)
		code = 1
	}
	return clusterDown(root, dir, keep, nodeStarted, code)
}

// runOnCluster runs the tests on a cluster that is already up (KYBERNATE_KUBECONFIG).
func runOnCluster(m *testing.M, root, kubeconfig string) int {
	var err error
	cluster, err = connect(root, "", kubeconfig, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "framework: KYBERNATE_KUBECONFIG: %v\n", err)
		return 1
	}
	cluster.realNode = os.Getenv("KYBERNATE_REAL_NODE")
	code := m.Run()
	if err := stopComponents(); err != nil {
		fmt.Fprintf(os.Stderr, "framework: %v\n", err)
		code = 1
	}
	return code
}

// clusterUp starts the package's cluster in a new folder under .cache/test-clusters.
func clusterUp(root string, keep bool) (string, error) {
	parent := filepath.Join(root, ".cache", "test-clusters")
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(parent, packageName()+"-")
	if err != nil {
		return "", err
	}
	env := []string{"KYBERNATE_CLUSTER_DIR=" + dir}
	if !keep {
		// cluster-up leaves a watchdog that stops the cluster when this binary
		// exits by any means, a test timeout's panic or SIGKILL included.
		env = append(env, "KYBERNATE_CLUSTER_OWNER_PID="+strconv.Itoa(os.Getpid()))
	}
	start := time.Now()
	if out, err := runScript(root, env, "hack/cluster-up.sh"); err != nil {
		return "", fmt.Errorf("hack/cluster-up.sh: %w\n%s\nlogs: %s", err, tail(out, 60), filepath.Join(dir, "logs"))
	}
	fmt.Fprintf(os.Stderr, "framework: cluster up in %s (%s)\n", time.Since(start).Round(100*time.Millisecond), dir)
	return dir, nil
}

// runTests runs the tests, first starting the real node when the package asks for one;
// nodeStarted says whether there is a node to stop.
func runTests(m *testing.M, root, dir string, keep bool) (code int, nodeStarted bool) {
	if !realNode {
		return m.Run(), false
	}
	name, skip, err := startRealNode(root, dir, keep)
	nodeStarted = err == nil || !skip // a failed node-up leaves things to clean up
	switch {
	case err == nil:
		cluster.realNode = name
		return m.Run(), nodeStarted
	case skip && !ci.Enabled():
		fmt.Fprintf(os.Stderr, "framework: %v\n", err)
		skipReason = fmt.Sprintf("these tests need a real node on this machine: %v; in CI this is a failure", err)
		return m.Run(), nodeStarted
	default:
		fmt.Fprintf(os.Stderr, "framework: real node: %v\n", err)
		return 1, nodeStarted
	}
}

// clusterDown stops the real node and the cluster, removing the folder after a pass, unless
// keep asks to leave them running; it returns code, or 1 when stopping failed.
func clusterDown(root, dir string, keep, nodeStarted bool, code int) int {
	if keep {
		if nodeStarted {
			fmt.Fprintf(os.Stderr, "framework: the real node runs too; stop it first with\n  KYBERNATE_CLUSTER_DIR=%s hack/node-down.sh\n", dir)
		}
		fmt.Fprintf(os.Stderr, "framework: KYBERNATE_KEEP_CLUSTER is set: cluster left running; stop it with\n  KYBERNATE_CLUSTER_DIR=%s hack/cluster-down.sh --purge\n", dir)
		return code
	}
	if nodeStarted {
		if err := stopRealNode(root, dir, code == 0); err != nil {
			fmt.Fprintf(os.Stderr, "framework: %v\n", err)
			code = 1
		}
	}
	args := []string{"hack/cluster-down.sh"}
	if code == 0 {
		args = append(args, "--purge")
	}
	if out, err := runScript(root, []string{"KYBERNATE_CLUSTER_DIR=" + dir}, args...); err != nil {
		fmt.Fprintf(os.Stderr, "framework: hack/cluster-down.sh: %v\n%s\n", err, tail(out, 20))
		return 1
	}
	if code != 0 {
		fmt.Fprintf(os.Stderr, "framework: component logs kept in %s\n", filepath.Join(dir, "logs"))
	}
	return code
}

func connect(root, dir, kubeconfig string, nodes int) (*Cluster, error) {
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	// Tests create objects in bursts; the client default of 5 qps would pace them.
	config.QPS, config.Burst = 200, 400
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return nil, fmt.Errorf("create client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(config)
	if err != nil {
		return nil, fmt.Errorf("create dynamic client: %w", err)
	}
	return &Cluster{Root: root, Dir: dir, Kubeconfig: kubeconfig, Nodes: nodes, Config: config, Client: client, Dynamic: dyn}, nil
}

func build(root string) error {
	cmd := exec.Command(filepath.Join(root, "hack", "build-controlplane.sh"))
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

// runScript runs a hack/ script from the repository root and returns its stdout
// and stderr interleaved; the last line of stdout is the script's result.
func runScript(root string, env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, args[0]), args[1:]...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// repoRoot is the folder of the go.mod above the working directory (go test runs a
// test binary in its package's folder).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "hack", "cluster-up.sh")); err == nil {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root (go.mod with hack/cluster-up.sh) not found above the working directory")
		}
		dir = parent
	}
}

// packageName names the cluster folder after the test package's folder.
func packageName() string {
	wd, err := os.Getwd()
	if err != nil {
		return "test"
	}
	return filepath.Base(wd)
}

func boolEnv(name string) bool {
	v, err := strconv.ParseBool(os.Getenv(name))
	return err == nil && v
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
