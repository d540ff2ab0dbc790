// Command bench-scheduler measures kybernate-scheduler against the default kube-scheduler on the
// same control plane: a local cluster of kwok nodes with simulated GPUs (the node agent in
// --simulate mode), N plain pods placed by the default scheduler, then N GPU pods placed by
// kybernate-scheduler. It prints pods/s and the p50/p99 latency from creation to binding for
// both, and the ratio, as a markdown table.
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
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

func main() {
	os.Exit(run())
}

type options struct {
	root, bin    string
	nodes, pods  int
	gpusPerNode  int
	slotsPerGPU  int
	createQPS    int
	keepCluster  bool
	timeout      time.Duration
	clusterDir   string
	resultPrefix string
}

func run() int {
	var o options
	flag.StringVar(&o.root, "root", ".", "repository root")
	flag.StringVar(&o.bin, "bin", "bin", "folder with kybernate-scheduler and kybernate-agent")
	flag.IntVar(&o.nodes, "nodes", 1000, "kwok nodes")
	flag.IntVar(&o.gpusPerNode, "gpus-per-node", 8, "simulated GPUs per node")
	flag.IntVar(&o.slotsPerGPU, "slots-per-gpu", 2, "pods per GPU")
	flag.IntVar(&o.pods, "pods", 2000, "pods per scheduler")
	flag.IntVar(&o.createQPS, "create-qps", 300, "pod creations per second (the same for both schedulers)")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "limit for each scheduler's run")
	flag.BoolVar(&o.keepCluster, "keep-cluster", false, "leave the cluster running")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	root, _ := filepath.Abs(o.root)
	o.clusterDir = filepath.Join(root, ".cache", "bench-cluster")
	env := append(os.Environ(), "KYBERNATE_CLUSTER_DIR="+o.clusterDir,
		fmt.Sprintf("KYBERNATE_NODES=%d", o.nodes), fmt.Sprintf("KYBERNATE_GPUS_PER_NODE=%d", o.gpusPerNode))
	up := exec.CommandContext(ctx, filepath.Join(root, "hack", "cluster-up.sh"))
	up.Env, up.Stderr = env, os.Stderr
	started := time.Now()
	out, err := up.Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster-up: %v\n", err)
		return 1
	}
	kubeconfig := strings.TrimSpace(string(out))
	fmt.Fprintf(os.Stderr, "cluster with %d kwok nodes up in %s\n", o.nodes, time.Since(started).Round(time.Second))
	if !o.keepCluster {
		defer func() {
			down := exec.Command(filepath.Join(root, "hack", "cluster-down.sh"), "--purge")
			down.Env, down.Stderr = env, os.Stderr
			_ = down.Run()
		}()
	}

	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	config.QPS, config.Burst = 1000, 2000
	client := kubernetes.NewForConfigOrDie(config)
	kc := versioned.NewForConfigOrDie(config)

	logs := filepath.Join(o.clusterDir, "logs")
	agent, err := start(ctx, filepath.Join(root, o.bin, "kybernate-agent"), filepath.Join(logs, "bench-agent.log"),
		"--simulate", "--kubeconfig", kubeconfig, "--simulate-node-selector", "type=kwok",
		"--slots-per-gpu", fmt.Sprint(o.slotsPerGPU), "--metrics-bind-address", "", "--socket", "",
		"--kube-api-qps", "500", "--kube-api-burst", "1000")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer stopProcess(agent)
	schedConfig := filepath.Join(o.clusterDir, "bench-scheduler.yaml")
	base, err := os.ReadFile(filepath.Join(root, "manifests", "scheduler", "config.yaml"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The shipped profile; leader election off and the same client limits as the default
	// scheduler of the harness.
	cfg := strings.Replace(string(base), "leaderElect: true", "leaderElect: false", 1) +
		fmt.Sprintf("clientConnection:\n  kubeconfig: %s\n  qps: 50\n  burst: 100\n", kubeconfig)
	if err := os.WriteFile(schedConfig, []byte(cfg), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sched, err := start(ctx, filepath.Join(root, o.bin, "kybernate-scheduler"), filepath.Join(logs, "bench-kybernate-scheduler.log"),
		"--config", schedConfig, "--controllers-config", filepath.Join(root, "manifests", "scheduler", "controllers.yaml"), "--secure-port", "0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer stopProcess(sched)

	fmt.Fprintf(os.Stderr, "waiting for %d GPUNodes\n", o.nodes)
	if err := waitGPUNodes(ctx, kc, o.nodes, 5*time.Minute); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	def, err := measure(ctx, client, o, "default-scheduler", false)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ours, err := measure(ctx, client, o, "kybernate-scheduler", true)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("# Scheduler throughput, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Printf("Command: `make bench-scheduler` (go run ./test/bench/scheduler -nodes %d -pods %d -create-qps %d); "+
		"%d kwok nodes x %d simulated GPUs, %d slots per GPU; both schedulers on the same control plane, one after the other; "+
		"kube-apiserver, etcd and both schedulers on this machine (%s).\n\n",
		o.nodes, o.pods, o.createQPS, o.nodes, o.gpusPerNode, o.slotsPerGPU, machine())
	fmt.Println("| scheduler | pods | pods placed | pods/s | p50 latency | p99 latency |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, r := range []result{def, ours} {
		fmt.Printf("| %s | %s | %d | %.1f | %s | %s |\n", r.scheduler, r.kind, r.placed, r.throughput(), r.percentile(50), r.percentile(99))
	}
	fmt.Printf("\nkybernate-scheduler / default-scheduler throughput: **%.2fx**\n", ours.throughput()/def.throughput())
	return 0
}

type result struct {
	scheduler, kind string
	placed          int
	window          time.Duration
	latencies       []time.Duration
}

func (r result) throughput() float64 { return float64(r.placed) / r.window.Seconds() }

func (r result) percentile(p int) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	s := slices.Clone(r.latencies)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)].Round(time.Millisecond)
}

// measure creates o.pods pods for a scheduler at o.createQPS and waits until all are bound.
func measure(ctx context.Context, client kubernetes.Interface, o options, scheduler string, gpu bool) (result, error) {
	ns := "bench-" + scheduler
	if _, err := client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return result{}, err
	}
	kind := "plain"
	if gpu {
		kind = "1 GPU, 20Gi"
	}
	res := result{scheduler: scheduler, kind: kind}
	var mu sync.Mutex
	created := map[string]time.Time{}
	bound := map[string]time.Time{}
	done := make(chan struct{})
	observe := func(obj interface{}) {
		pod, ok := obj.(*v1.Pod)
		if !ok || pod.Spec.NodeName == "" {
			return
		}
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if _, seen := bound[pod.Name]; seen {
			return
		}
		bound[pod.Name] = now
		if len(bound) == o.pods {
			close(done)
		}
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns))
	if _, err := factory.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    observe,
		UpdateFunc: func(_, obj interface{}) { observe(obj) },
	}); err != nil {
		return res, err
	}
	informerCtx, stopInformer := context.WithCancel(ctx)
	defer stopInformer()
	factory.Start(informerCtx.Done())
	factory.WaitForCacheSync(informerCtx.Done())

	first := time.Now()
	tick := time.NewTicker(time.Second / time.Duration(o.createQPS))
	defer tick.Stop()
	var wg sync.WaitGroup
	errs := make(chan error, o.pods)
	for i := range o.pods {
		<-tick.C
		pod := benchPod(ns, fmt.Sprintf("p-%05d", i), scheduler, gpu)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
				errs <- err
				return
			}
			mu.Lock()
			created[pod.Name] = time.Now()
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return res, fmt.Errorf("creating pods: %w", err)
	}
	select {
	case <-done:
	case <-time.After(o.timeout):
		fmt.Fprintf(os.Stderr, "%s: timed out with %d of %d pods bound\n", scheduler, len(bound), o.pods)
	case <-ctx.Done():
		return res, ctx.Err()
	}
	mu.Lock()
	defer mu.Unlock()
	var last time.Time
	for name, b := range bound {
		c, ok := created[name]
		if !ok {
			continue
		}
		res.latencies = append(res.latencies, max(b.Sub(c), 0))
		if b.After(last) {
			last = b
		}
	}
	res.placed = len(res.latencies)
	res.window = last.Sub(first)
	fmt.Fprintf(os.Stderr, "%s: %d pods bound in %s\n", scheduler, res.placed, res.window.Round(time.Millisecond))
	return res, nil
}

func benchPod(ns, name, scheduler string, gpu bool) *v1.Pod {
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1.PodSpec{
			SchedulerName: scheduler,
			Containers: []v1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10", Resources: v1.ResourceRequirements{
				Requests: v1.ResourceList{v1.ResourceCPU: resource.MustParse("100m"), v1.ResourceMemory: resource.MustParse("128Mi")},
			}}},
		},
	}
	if gpu {
		pod.Annotations = map[string]string{kv1.AnnotationGPUMemory: "20Gi"}
		pod.Spec.Containers[0].Resources.Limits = v1.ResourceList{kv1.ResourceGPU: resource.MustParse("1")}
	}
	return pod
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
		return nil, fmt.Errorf("starting %s: %w", path, err)
	}
	return cmd, nil
}

func stopProcess(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
}

func machine() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	model := ""
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "model name") {
			model = strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
			break
		}
	}
	n := strings.Count(string(data), "processor\t:")
	return fmt.Sprintf("%d x %s", n, model)
}
