package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

type result struct {
	placed    int
	window    time.Duration
	latencies []time.Duration
	algorithm histogram
	attempt   histogram
	cpu       cpuTimes // CPU time of each component while the pods were created and bound
	api       census   // kube-apiserver's write requests and watch events meanwhile
}

// measureContender measures one repetition of a contender on an empty cluster: starts its
// processes, scrapes its histograms before and after, profiles it when profile names a file,
// then stops it and deletes the pods.
func measureContender(ctx context.Context, client kubernetes.Interface, kc versioned.Interface, o options, c *contender, ns, profile string) (result, error) {
	started := time.Now()
	in, err := c.start(ctx, filepath.Join(o.clusterDir, "logs", ns+".log"))
	if err != nil {
		return result{}, err
	}
	fmt.Fprintf(os.Stderr, "%s: ready in %s\n", c.label, time.Since(started).Round(time.Millisecond))
	stopped := false
	stop := func() {
		if !stopped {
			in.stop()
			stopped = true
		}
	}
	defer stop()
	want := []series{algorithm(), attempt(c.scheduler)}
	before, err := in.metrics.scrape(ctx, want...)
	if err != nil {
		return result{}, err
	}
	profiled := make(chan error, 2)
	if profile != "" {
		go func() { profiled <- in.metrics.profileCPU(ctx, o.profileFor, profile) }()
		go func() {
			// A cluster started without its profiling (-kubeconfig) still gives the scheduler's.
			if err := profileAPIServer(ctx, client, o.profileFor, profile+".apiserver"); err != nil {
				fmt.Fprintf(os.Stderr, "no profile of kube-apiserver: %v\n", err)
			}
			profiled <- nil
		}()
	} else {
		profiled <- nil
		profiled <- nil
	}
	var pids []int
	for _, p := range in.procs {
		pids = append(pids, p.Process.Pid)
	}
	censusBefore, err := scrapeCensus(ctx, client)
	if err != nil {
		return result{}, err
	}
	cpuBefore := sampleCPU(o, pids)
	r, err := measure(ctx, client, o, ns, c.scheduler, c.gpu)
	r.cpu = sampleCPU(o, pids).since(cpuBefore)
	if err != nil {
		return r, err
	}
	censusAfter, err := scrapeCensus(ctx, client)
	r.api = censusAfter.since(censusBefore)
	if err != nil {
		return r, err
	}
	for range 2 {
		if err := <-profiled; err != nil {
			return r, fmt.Errorf("profiling: %w", err)
		}
	}
	after, err := in.metrics.scrape(ctx, want...)
	if err != nil {
		return r, err
	}
	r.algorithm, r.attempt = after[0].since(before[0]), after[1].since(before[1])
	fmt.Fprintf(os.Stderr, "%s: %d pods bound in %s (%.1f pods/s)\n", c.label, r.placed, r.window.Round(time.Millisecond), r.throughput())
	stop()
	deleted := time.Now()
	if err := deletePods(ctx, client, kc, ns, o.timeout); err != nil {
		return r, err
	}
	fmt.Fprintf(os.Stderr, "%s: pods deleted and gone from the GPUNodes in %s\n", c.label, time.Since(deleted).Round(time.Millisecond))
	return r, nil
}

// measure creates o.pods pods for a scheduler at o.createQPS and waits until all are bound.
func measure(ctx context.Context, client kubernetes.Interface, o options, ns, scheduler string, gpu bool) (result, error) {
	if _, err := client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return result{}, err
	}
	var res result
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
			if err := create(ctx, client, pod); err != nil {
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
	return res, nil
}

// create creates a pod; a loaded API server that times out is asked again (twice at most), and
// a pod that turns out to exist then counts as created.
func create(ctx context.Context, client kubernetes.Interface, pod *v1.Pod) error {
	var err error
	for range 3 {
		_, err = client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			return nil
		}
		if !apierrors.IsTimeout(err) && !apierrors.IsServerTimeout(err) {
			return err
		}
	}
	return err
}

// benchPod is the same pod for every contender; only the GPU contenders' pods ask for a GPU.
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
	pod.Annotations = map[string]string{kv1.AnnotationGPUMemory: "20Gi"}
	if gpu {
		pod.Spec.Containers[0].Resources.Limits = v1.ResourceList{kv1.ResourceGPU: resource.MustParse("1")}
	}
	return pod
}

// deletePods deletes a repetition's pods at once and waits until they are gone and no GPUNode
// reports a pod any more, so that the next contender starts on an empty cluster.
func deletePods(ctx context.Context, client kubernetes.Interface, kc versioned.Interface, ns string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{Limit: 1})
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			// On a loaded machine the API server may answer a large deletion with a timeout or
			// a broken stream while it goes on deleting: asked again until no pod is left or
			// the time is up.
			err := client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}, metav1.ListOptions{})
			if err != nil {
				fmt.Fprintf(os.Stderr, "deleting the pods of %s (asked again): %v\n", ns, err)
			}
		}
		gns, err := kc.KybernateV1alpha1().GPUNodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		reported := 0
		for _, gn := range gns.Items {
			for _, g := range gn.Status.GPUs {
				reported += len(g.Pods)
			}
		}
		if len(pods.Items) == 0 && reported == 0 {
			return client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d pods of %s left, GPUNodes still report %d pods after %s", len(pods.Items), ns, reported, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}
