// Command bench-scheduler measures Kybernate's two ways of placing GPU pods against the default
// kube-scheduler on the same control plane: a local cluster of kwok nodes with simulated GPUs
// (the node agent in --simulate mode). The contenders, all with the same client limits
// (-client-qps, -client-burst):
//
//   - the default kube-scheduler (its default plugins), with the same pods without the GPU
//     resource;
//   - kybernate-scheduler with the shipped profile and controllers;
//   - the stock kube-scheduler configured with kybernate-extender (docs/extender.md), which runs
//     the controllers too;
//   - with -baseline-ref or -baseline-binary, kybernate-scheduler built from another commit, so
//     that a change is measured before and after in one run on the same machine.
//
// Each repetition measures every contender once, on an empty cluster: its processes are started,
// the same pods are created at -create-qps, and once all are bound the processes are stopped and
// the pods deleted. The order of the contenders rotates between repetitions. The program writes
// the results as Markdown into test/bench/results (-out) and prints them: pods/s (min, median,
// max over the repetitions), the p50/p99 latency from creation to binding, and the p99 of the
// scheduling algorithm and of the scheduling attempt from each kube-scheduler's own metrics.
// Where the time goes: the CPU seconds per 1000 pods of the contender's processes, kube-apiserver,
// etcd, kwok, kube-controller-manager and the agent (/proc/<pid>/stat), and kube-apiserver's
// write requests and watch events per pod (its apiserver_request_total and
// apiserver_watch_events_total), each between the first creation and the last binding.
//
// Latency is measured by this program: from the return of the create call to the first watch
// event that shows the pod bound.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
)

func main() {
	os.Exit(run())
}

type options struct {
	root, bin      string
	kubeScheduler  string
	nodes, pods    int
	gpusPerNode    int
	slotsPerGPU    int
	createQPS      int
	clientQPS      int
	clientBurst    int
	reps           int
	keepCluster    bool
	timeout        time.Duration
	clusterDir     string
	cpuProfile     string
	kubeconfig     string
	profileFor     time.Duration
	baselineRef    string
	baselineBinary string
	out            string
	skipExtender   bool
	agentPID       int // the simulated agent, whose CPU time the report counts
}

func run() int {
	var o options
	flag.StringVar(&o.root, "root", ".", "repository root")
	flag.StringVar(&o.bin, "bin", "bin", "folder with kybernate-scheduler, kybernate-extender and kybernate-agent")
	flag.StringVar(&o.kubeScheduler, "kube-scheduler", "", "kube-scheduler binary (default: $KYBERNATE_CACHE_DIR/bin/kube-scheduler)")
	flag.IntVar(&o.nodes, "nodes", 1000, "kwok nodes")
	flag.IntVar(&o.gpusPerNode, "gpus-per-node", 8, "simulated GPUs per node")
	flag.IntVar(&o.slotsPerGPU, "slots-per-gpu", 2, "pods per GPU")
	flag.IntVar(&o.pods, "pods", 2000, "pods per contender and repetition")
	flag.IntVar(&o.createQPS, "create-qps", 500, "pod creations per second (the same for every contender)")
	flag.IntVar(&o.clientQPS, "client-qps", 500, "client QPS of every scheduler and of the extender")
	flag.IntVar(&o.clientBurst, "client-burst", 1000, "client burst of every scheduler and of the extender")
	flag.IntVar(&o.reps, "reps", 3, "repetitions per contender")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "limit for each contender's repetition")
	flag.BoolVar(&o.keepCluster, "keep-cluster", false, "leave the cluster running")
	flag.StringVar(&o.kubeconfig, "kubeconfig", "", "use the running bench cluster of this admin kubeconfig (left running) instead of starting one")
	flag.DurationVar(&o.profileFor, "cpuprofile-duration", 30*time.Second, "length of the CPU profile, from the start of the repetition")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of kybernate-scheduler (this tree) during its first repetition here, one of the default kube-scheduler to this path + .default, and one of kube-apiserver over the same times to each path + .apiserver")
	flag.StringVar(&o.baselineRef, "baseline-ref", "", "also measure kybernate-scheduler built from this git commit (a temporary git worktree)")
	flag.StringVar(&o.baselineBinary, "baseline-binary", "", "also measure this kybernate-scheduler binary as the baseline (instead of -baseline-ref)")
	flag.StringVar(&o.out, "out", "", "results file (default: test/bench/results/scheduler-<date>.md under -root; - for none)")
	flag.BoolVar(&o.skipExtender, "skip-extender", false, "leave out kube-scheduler + kybernate-extender")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func bench(ctx context.Context, o options) error {
	root, _ := filepath.Abs(o.root)
	o.root = root
	if o.kubeScheduler == "" {
		o.kubeScheduler = filepath.Join(os.Getenv("KYBERNATE_CACHE_DIR"), "bin", "kube-scheduler")
	}
	if o.out == "" {
		o.out = filepath.Join(root, "test", "bench", "results", "scheduler-"+time.Now().UTC().Format("2006-01-02")+".md")
	}
	o.clusterDir = filepath.Join(root, ".cache", "bench-cluster")
	if err := os.MkdirAll(filepath.Join(o.clusterDir, "logs"), 0o755); err != nil {
		return err
	}
	baseline, err := baselineScheduler(ctx, o)
	if err != nil {
		return err
	}
	loadBefore := loadAverage()
	kubeconfig, down, err := cluster(ctx, o)
	if err != nil {
		return err
	}
	defer down()

	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	config.QPS, config.Burst = 1000, 2000
	client := kubernetes.NewForConfigOrDie(config)
	kc := versioned.NewForConfigOrDie(config)

	// The controllers' Events and leases live there, as in manifests/.
	if _, err := client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kybernate-system"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	agent, err := start(ctx, filepath.Join(root, o.bin, "kybernate-agent"), filepath.Join(o.clusterDir, "logs", "bench-agent.log"),
		"--simulate", "--kubeconfig", kubeconfig, "--simulate-node-selector", "type=kwok",
		"--slots-per-gpu", fmt.Sprint(o.slotsPerGPU), "--metrics-bind-address", "", "--socket", "",
		// The simulated pods' progress annotation is the simulated workload's test instrument, not
		// something a real agent writes: every 2 s a PATCH of each running GPU pod, which the API
		// server, etcd, kwok and every pod watcher would pay for during the GPU contenders only.
		"--simulate-progress-period", "1h",
		"--kube-api-qps", "500", "--kube-api-burst", "1000")
	if err != nil {
		return err
	}
	defer stopProcess(agent)
	o.agentPID = agent.Process.Pid
	fmt.Fprintf(os.Stderr, "waiting for %d GPUNodes\n", o.nodes)
	if err := waitGPUNodes(ctx, kc, o.nodes, 5*time.Minute); err != nil {
		return err
	}

	contenders, err := newContenders(o, kubeconfig, baseline)
	if err != nil {
		return err
	}
	// Namespaces of this run: a kept cluster may hold earlier runs' pods.
	runID := time.Now().UTC().Format("150405")
	runs := make([][]result, len(contenders))
	for rep := range o.reps {
		for k := range contenders {
			i := (k + rep) % len(contenders) // the order rotates: no contender always goes first
			c := contenders[i]
			profile := ""
			if rep == 0 && c.profiled && o.cpuProfile != "" {
				profile = o.cpuProfile
				if c.key != "kybernate" {
					profile += "." + c.key
				}
			}
			ns := fmt.Sprintf("bench-%s-%s-%d", c.key, runID, rep+1)
			r, err := measureContender(ctx, client, kc, o, c, ns, profile)
			if err != nil {
				return fmt.Errorf("%s, repetition %d: %w", c.label, rep+1, err)
			}
			runs[i] = append(runs[i], r)
		}
	}
	var md strings.Builder
	report(&md, o, loadBefore, loadAverage(), contenders, runs)
	fmt.Print(md.String())
	if o.out != "-" {
		if err := os.WriteFile(o.out, []byte(md.String()), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "results written to %s\n", o.out)
	}
	return nil
}

// cluster starts the bench cluster (or uses -kubeconfig's) and returns its admin kubeconfig and
// what tears it down.
func cluster(ctx context.Context, o options) (string, func(), error) {
	if o.kubeconfig != "" {
		return o.kubeconfig, func() {}, nil
	}
	env := append(os.Environ(), "KYBERNATE_CLUSTER_DIR="+o.clusterDir,
		fmt.Sprintf("KYBERNATE_NODES=%d", o.nodes), fmt.Sprintf("KYBERNATE_GPUS_PER_NODE=%d", o.gpusPerNode),
		fmt.Sprintf("KYBERNATE_APISERVER_PROFILING=%t", o.cpuProfile != "")) // its profile beside the scheduler's
	up := exec.CommandContext(ctx, filepath.Join(o.root, "hack", "cluster-up.sh"))
	up.Env, up.Stderr = env, os.Stderr
	started := time.Now()
	out, err := up.Output()
	if err != nil {
		return "", nil, fmt.Errorf("cluster-up: %w", err)
	}
	fmt.Fprintf(os.Stderr, "cluster with %d kwok nodes up in %s\n", o.nodes, time.Since(started).Round(time.Second))
	down := func() {
		if o.keepCluster {
			return
		}
		cmd := exec.Command(filepath.Join(o.root, "hack", "cluster-down.sh"), "--purge")
		cmd.Env, cmd.Stderr = env, os.Stderr
		_ = cmd.Run()
	}
	return strings.TrimSpace(string(out)), down, nil
}

func waitGPUNodes(ctx context.Context, kc versioned.Interface, want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		list, err := kc.KybernateV1alpha1().GPUNodes().List(ctx, metav1.ListOptions{})
		if err == nil {
			ready := 0
			for _, gn := range list.Items {
				if len(gn.Status.GPUs) > 0 {
					ready++
				}
			}
			if ready >= want {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return fmt.Errorf("fewer than %d GPUNodes report GPUs after %s", want, timeout)
}

func start(ctx context.Context, path, logPath string, args ...string) (*exec.Cmd, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", path, err)
	}
	return cmd, nil
}

func stopProcess(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
}
