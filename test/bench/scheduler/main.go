// Command bench-scheduler measures kybernate-scheduler against the default kube-scheduler on the
// same control plane: a local cluster of kwok nodes with simulated GPUs (the node agent in
// --simulate mode), and two scheduler processes started here with the same client limits
// (-client-qps, -client-burst): kube-scheduler with its default plugins, and kybernate-scheduler
// with the shipped profile and controllers. Each repetition creates the same pods for both, one
// scheduler after the other: GPU pods (kybernate.io/gpu: 1, 20Gi) for kybernate-scheduler and
// the same pods without the GPU resource for the default one. It prints pods/s (min, median,
// max over the repetitions), the p50/p99 latency from creation to binding, and the p99 of the
// scheduling algorithm from each scheduler's own scheduler_scheduling_algorithm_duration_seconds,
// as Markdown.
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
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
	root, bin     string
	kubeScheduler string
	nodes, pods   int
	gpusPerNode   int
	slotsPerGPU   int
	createQPS     int
	clientQPS     int
	clientBurst   int
	reps          int
	keepCluster   bool
	timeout       time.Duration
	clusterDir    string
	cpuProfile    string
	kubeconfig    string
	profileFor    time.Duration
}

// defaultName is the profile of the default kube-scheduler that this program starts; the
// cluster's own default-scheduler keeps its lower client limits and serves nothing here.
const defaultName = "bench-default-scheduler"

func run() int {
	var o options
	flag.StringVar(&o.root, "root", ".", "repository root")
	flag.StringVar(&o.bin, "bin", "bin", "folder with kybernate-scheduler and kybernate-agent")
	flag.StringVar(&o.kubeScheduler, "kube-scheduler", "", "kube-scheduler binary (default: $KYBERNATE_CACHE_DIR/bin/kube-scheduler)")
	flag.IntVar(&o.nodes, "nodes", 1000, "kwok nodes")
	flag.IntVar(&o.gpusPerNode, "gpus-per-node", 8, "simulated GPUs per node")
	flag.IntVar(&o.slotsPerGPU, "slots-per-gpu", 2, "pods per GPU")
	flag.IntVar(&o.pods, "pods", 2000, "pods per scheduler and repetition")
	flag.IntVar(&o.createQPS, "create-qps", 500, "pod creations per second (the same for both schedulers)")
	flag.IntVar(&o.clientQPS, "client-qps", 500, "both schedulers' client QPS")
	flag.IntVar(&o.clientBurst, "client-burst", 1000, "both schedulers' client burst")
	flag.IntVar(&o.reps, "reps", 3, "repetitions per scheduler")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "limit for each scheduler's run")
	flag.BoolVar(&o.keepCluster, "keep-cluster", false, "leave the cluster running")
	flag.StringVar(&o.kubeconfig, "kubeconfig", "", "use the running bench cluster of this admin kubeconfig (left running) instead of starting one")
	flag.DurationVar(&o.profileFor, "cpuprofile-duration", 30*time.Second, "length of the CPU profile, from the start of the repetition")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of kybernate-scheduler during its first repetition here")
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
	if o.kubeScheduler == "" {
		o.kubeScheduler = filepath.Join(os.Getenv("KYBERNATE_CACHE_DIR"), "bin", "kube-scheduler")
	}
	loadBefore := loadAverage()
	o.clusterDir = filepath.Join(root, ".cache", "bench-cluster")
	env := append(os.Environ(), "KYBERNATE_CLUSTER_DIR="+o.clusterDir,
		fmt.Sprintf("KYBERNATE_NODES=%d", o.nodes), fmt.Sprintf("KYBERNATE_GPUS_PER_NODE=%d", o.gpusPerNode))
	kubeconfig := o.kubeconfig
	if kubeconfig == "" {
		up := exec.CommandContext(ctx, filepath.Join(root, "hack", "cluster-up.sh"))
		up.Env, up.Stderr = env, os.Stderr
		started := time.Now()
		out, err := up.Output()
		if err != nil {
			return fmt.Errorf("cluster-up: %w", err)
		}
		kubeconfig = strings.TrimSpace(string(out))
		fmt.Fprintf(os.Stderr, "cluster with %d kwok nodes up in %s\n", o.nodes, time.Since(started).Round(time.Second))
	}
	if !o.keepCluster && o.kubeconfig == "" {
		defer func() {
			down := exec.Command(filepath.Join(root, "hack", "cluster-down.sh"), "--purge")
			down.Env, down.Stderr = env, os.Stderr
			_ = down.Run()
		}()
	}

	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	config.QPS, config.Burst = 1000, 2000
	client := kubernetes.NewForConfigOrDie(config)
	kc := versioned.NewForConfigOrDie(config)

	// The controllers' leader election lease lives there, as in manifests/.
	if _, err := client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kybernate-system"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	logs := filepath.Join(o.clusterDir, "logs")
	agent, err := start(ctx, filepath.Join(root, o.bin, "kybernate-agent"), filepath.Join(logs, "bench-agent.log"),
		"--simulate", "--kubeconfig", kubeconfig, "--simulate-node-selector", "type=kwok",
		"--slots-per-gpu", fmt.Sprint(o.slotsPerGPU), "--metrics-bind-address", "", "--socket", "",
		"--kube-api-qps", "500", "--kube-api-burst", "1000")
	if err != nil {
		return err
	}
	defer stopProcess(agent)
	def, err := startScheduler(ctx, o, kubeconfig, o.kubeScheduler, defaultConfig(o, kubeconfig))
	if err != nil {
		return err
	}
	defer stopProcess(def.cmd)
	base, err := os.ReadFile(filepath.Join(root, "manifests", "scheduler", "config.yaml"))
	if err != nil {
		return err
	}
	// The shipped profile and controllers; leader election off for the profile, the client
	// limits the same as the default scheduler's.
	ours, err := startScheduler(ctx, o, kubeconfig, filepath.Join(root, o.bin, "kybernate-scheduler"),
		strings.Replace(string(base), "leaderElect: true", "leaderElect: false", 1)+clientConnection(o, kubeconfig),
		"--controllers-config", filepath.Join(root, "manifests", "scheduler", "controllers.yaml"))
	if err != nil {
		return err
	}
	defer stopProcess(ours.cmd)
	for _, s := range []*scheduler{def, ours} {
		if err := s.endpoint.waitReady(ctx, 2*time.Minute); err != nil {
			return err
		}
	}

	fmt.Fprintf(os.Stderr, "waiting for %d GPUNodes\n", o.nodes)
	if err := waitGPUNodes(ctx, kc, o.nodes, 5*time.Minute); err != nil {
		return err
	}
	// Namespaces of this run: a kept cluster may hold earlier runs' pods.
	runID := time.Now().UTC().Format("150405")
	var defRuns, ourRuns []result
	for rep := range o.reps {
		for _, s := range []*scheduler{def, ours} {
			profile := ""
			if s == ours && rep == 0 {
				profile = o.cpuProfile
			}
			r, err := measureScheduler(ctx, client, o, s, fmt.Sprintf("bench-%s-%s-%d", s.name, runID, rep+1), profile)
			if err != nil {
				return err
			}
			if s == def {
				defRuns = append(defRuns, r)
			} else {
				ourRuns = append(ourRuns, r)
			}
		}
	}
	report(os.Stdout, o, loadBefore, loadAverage(), defRuns, ourRuns)
	return nil
}

// scheduler is one scheduler process of the bench.
type scheduler struct {
	name     string // the profile's schedulerName
	gpu      bool   // whether its pods ask for a GPU
	cmd      *exec.Cmd
	endpoint endpoint
}

func defaultConfig(o options, kubeconfig string) string {
	return "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n" +
		"leaderElection:\n  leaderElect: false\nprofiles:\n- schedulerName: " + defaultName + "\n" +
		clientConnection(o, kubeconfig)
}

func clientConnection(o options, kubeconfig string) string {
	return fmt.Sprintf("clientConnection:\n  kubeconfig: %s\n  qps: %d\n  burst: %d\n", kubeconfig, o.clientQPS, o.clientBurst)
}

// startScheduler starts kube-scheduler or kybernate-scheduler with a configuration, serving
// /metrics and /debug/pprof (profiling is on by default in a KubeSchedulerConfiguration) on a
// free port without authentication.
func startScheduler(ctx context.Context, o options, kubeconfig, path, config string, args ...string) (*scheduler, error) {
	s := &scheduler{name: defaultName}
	if strings.Contains(config, "schedulerName: kybernate-scheduler") {
		s.name, s.gpu = "kybernate-scheduler", true
	}
	file := filepath.Join(o.clusterDir, "bench-"+s.name+".yaml")
	if err := os.WriteFile(file, []byte(config), 0o644); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s.endpoint = newEndpoint(port)
	s.cmd, err = start(ctx, path, filepath.Join(o.clusterDir, "logs", "bench-"+s.name+".log"),
		append([]string{"--config", file, "--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(port),
			"--authorization-always-allow-paths", "/healthz,/readyz,/livez,/metrics,/debug/pprof/*"}, args...)...)
	return s, err
}

// measureScheduler measures one repetition of a scheduler, with its algorithm histogram
// scraped before and after, and a CPU profile when profile names a file.
func measureScheduler(ctx context.Context, client kubernetes.Interface, o options, s *scheduler, ns, profile string) (result, error) {
	before, err := s.endpoint.scrape(ctx, algorithmMetric)
	if err != nil {
		return result{}, err
	}
	profiled := make(chan error, 1)
	if profile != "" {
		go func() { profiled <- s.endpoint.profileCPU(ctx, o.profileFor, profile) }()
	} else {
		profiled <- nil
	}
	r, err := measure(ctx, client, o, ns, s.name, s.gpu)
	if err != nil {
		return r, err
	}
	if err := <-profiled; err != nil {
		return r, fmt.Errorf("profiling %s: %w", s.name, err)
	}
	after, err := s.endpoint.scrape(ctx, algorithmMetric)
	if err != nil {
		return r, err
	}
	r.algorithm = after.since(before)
	return r, nil
}

type result struct {
	scheduler, kind string
	placed          int
	window          time.Duration
	latencies       []time.Duration
	algorithm       histogram
}

// measure creates o.pods pods for a scheduler at o.createQPS and waits until all are bound.
func measure(ctx context.Context, client kubernetes.Interface, o options, ns, scheduler string, gpu bool) (result, error) {
	if _, err := client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return result{}, err
	}
	kind := "no GPU, 20Gi annotation"
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
	// The same pod for both schedulers, but only kybernate-scheduler's asks for a GPU.
	pod.Annotations = map[string]string{kv1.AnnotationGPUMemory: "20Gi"}
	if gpu {
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
