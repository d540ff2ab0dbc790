package activator

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kinformers "github.com/kybernate/kybernate/apis/kybernate/client/informers/externalversions/kybernate/v1alpha1"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// Config is the activator's behaviour.
type Config struct {
	Limits
	// WakeTimeout bounds a wake: held requests are answered 503 when no pod is ready this long
	// after the first of them arrived.
	WakeTimeout time.Duration
	// Interval is how often every Service is looked at for idle pods and wake timeouts.
	Interval time.Duration
	// ClusterDomain is the cluster's DNS domain, for Host headers such as
	// llm.ml.svc.cluster.local.
	ClusterDomain string
	// Address is where a ready pod serves port; nil means its pod IP. Tests whose pods run no
	// process (kwok) point it at a server of their own.
	Address func(pod *v1.Pod, port int) string
}

// Controller keeps a Backend per Service that names its pods with
// kybernate.io/backend-selector, points it at a ready pod, wakes sleeping pods for held
// requests and puts idle pods to sleep.
type Controller struct {
	cfg         Config
	client      kubernetes.Interface
	kybernate   versioned.Interface
	services    corelisters.ServiceLister
	pods        corelisters.PodLister
	checkpoints listers.GPUCheckpointLister
	recorder    events.EventRecorder
	queue       workqueue.TypedRateLimitingInterface[string]
	now         func() time.Time

	mu     sync.RWMutex
	routes map[string]*route // by namespace/name of the Service
	hosts  map[string]string // Host header -> route key; "" when ambiguous
}

// route is one Service behind the activator.
type route struct {
	backend  *Backend
	selector labels.Selector
	port     int
	// invalid is the last error of the Service's annotations, reported once.
	invalid string
	// reported are the pod annotation errors and failed resumes already told (an Event
	// each), so that a sync every Interval does not repeat them.
	reported map[string]bool
}

// NewController wires the controller to informers that the caller starts.
func NewController(cfg Config, client kubernetes.Interface, kybernate versioned.Interface, services coreinformers.ServiceInformer,
	pods coreinformers.PodInformer, checkpoints kinformers.GPUCheckpointInformer, recorder events.EventRecorder) (*Controller, error) {
	if cfg.Address == nil {
		cfg.Address = func(pod *v1.Pod, port int) string { return net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(port)) }
	}
	c := &Controller{
		cfg: cfg, client: client, kybernate: kybernate,
		services: services.Lister(), pods: pods.Lister(), checkpoints: checkpoints.Lister(), recorder: recorder,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "kybernate-activator"}),
		now:    time.Now,
		routes: map[string]*route{},
		hosts:  map[string]string{},
	}
	svcKey := func(obj interface{}) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	podKey := func(obj interface{}) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if pod, ok := obj.(*v1.Pod); ok {
			c.queuePod(pod.Namespace, pod.Labels)
		}
	}
	if _, err := services.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: svcKey, UpdateFunc: func(_, obj interface{}) { svcKey(obj) }, DeleteFunc: svcKey,
	}); err != nil {
		return nil, err
	}
	if _, err := pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: podKey, UpdateFunc: func(_, obj interface{}) { podKey(obj) }, DeleteFunc: podKey,
	}); err != nil {
		return nil, err
	}
	if _, err := checkpoints.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj interface{}) {
			ck := obj.(*kv1.GPUCheckpoint)
			if pod, err := c.pods.Pods(ck.Namespace).Get(ck.Spec.PodName); err == nil {
				c.queuePod(pod.Namespace, pod.Labels)
			}
		},
	}); err != nil {
		return nil, err
	}
	return c, nil
}

// queuePod queues the Services whose backend selector picks a pod with these labels.
func (c *Controller) queuePod(namespace string, podLabels map[string]string) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for key, r := range c.routes {
		if strings.HasPrefix(key, namespace+"/") && r.selector.Matches(labels.Set(podLabels)) {
			c.queue.Add(key)
		}
	}
}

// Route implements Router: Host <service>.<namespace>[.svc[.<cluster domain>]], or
// <service> alone when one namespace has a Service of that name behind the activator.
func (c *Controller) Route(host string) (*Backend, error) {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	c.mu.RLock()
	defer c.mu.RUnlock()
	key, ok := c.hosts[host]
	switch {
	case !ok:
		return nil, fmt.Errorf("no Service behind the activator answers to host %q: a Service of type ExternalName that points here needs the annotations %s and %s", host, kv1.AnnotationBackendSelector, kv1.AnnotationBackendPort)
	case key == "":
		return nil, fmt.Errorf("host %q names Services behind the activator in several namespaces: use <service>.<namespace>", host)
	}
	return c.routes[key].backend, nil
}

// Run processes Services until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) {
	defer utilruntime.HandleCrashWithContext(ctx)
	defer c.queue.ShutDown()
	logger := klog.FromContext(ctx)
	logger.Info("Starting activator controller")
	for range workers {
		go wait.UntilWithContext(ctx, func(ctx context.Context) {
			for c.processNext(ctx) {
			}
		}, time.Second)
	}
	// Idleness and wake timeouts are questions of time, not of events.
	wait.UntilWithContext(ctx, func(context.Context) {
		c.mu.RLock()
		defer c.mu.RUnlock()
		for key := range c.routes {
			c.queue.Add(key)
		}
	}, c.cfg.Interval)
	logger.Info("Stopping activator controller")
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	if err := c.sync(ctx, key); err != nil {
		utilruntime.HandleErrorWithContext(ctx, err, "Syncing a Service behind the activator failed", "service", key)
		c.queue.AddRateLimited(key)
		return true
	}
	c.queue.Forget(key)
	return true
}

// sync brings one Service's route up to date and acts on its pods.
func (c *Controller) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	svc, err := c.services.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		c.removeRoute(key, "its Service was deleted")
		return nil
	}
	if err != nil {
		return err
	}
	b, ok, err := gpupod.ServiceBackend(svc)
	if !ok {
		c.removeRoute(key, "its Service no longer names a backend")
		return nil
	}
	if err != nil {
		c.invalidService(svc, key, err)
		return nil
	}
	r := c.ensureRoute(key, b)
	pods, err := c.pods.Pods(ns).List(r.selector)
	if err != nil {
		return err
	}
	pods = slices.DeleteFunc(pods, func(p *v1.Pod) bool {
		return p.DeletionTimestamp != nil || p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed
	})
	slices.SortFunc(pods, func(a, b *v1.Pod) int { return strings.Compare(a.Name, b.Name) })
	if ready := c.firstReady(pods); ready != nil {
		if w, woke := r.backend.SetReady(c.cfg.Address(ready, r.port)); woke {
			klog.FromContext(ctx).V(2).Info("Woke", "service", key, "pod", klog.KObj(ready), "latency", w.Latency, "held", w.Held)
			c.recorder.Eventf(ready, nil, v1.EventTypeNormal, "Woken", "Wake", "Ready %s after the first held request; %d held requests go to it", w.Latency.Round(time.Millisecond), w.Held)
		}
		return c.sleepIfIdle(ctx, key, r, pods)
	}
	r.backend.SetAsleep()
	return c.wake(ctx, key, r, pods)
}

// ensureRoute creates or updates the route of a valid Service and its host names.
func (c *Controller) ensureRoute(key string, b gpupod.Backend) *route {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.routes[key]
	if !ok || r.backend == nil {
		r = &route{backend: NewBackend(key, c.cfg.Limits, func() { c.queue.Add(key) }, c.now), reported: map[string]bool{}}
		c.routes[key] = r
		c.rebuildHosts()
		heldRequests.WithLabelValues(key).Set(0) // the series exists before the first hold
	}
	r.selector, r.port, r.invalid = b.Selector, b.Port, ""
	return r
}

func (c *Controller) invalidService(svc *v1.Service, key string, err error) {
	c.mu.Lock()
	r := c.routes[key]
	c.mu.Unlock()
	if r != nil && r.invalid == err.Error() {
		return
	}
	c.removeRoute(key, err.Error())
	c.recorder.Eventf(svc, nil, v1.EventTypeWarning, "InvalidBackend", "Route", "The activator does not serve this Service: %v", err)
	c.mu.Lock()
	defer c.mu.Unlock()
	// Remembered without a backend, so that the Event is not repeated.
	c.routes[key] = &route{backend: nil, selector: labels.Nothing(), invalid: err.Error(), reported: map[string]bool{}}
	c.rebuildHosts()
}

// removeRoute drops a route; its held requests are answered with why.
func (c *Controller) removeRoute(key, why string) {
	c.mu.Lock()
	r, ok := c.routes[key]
	delete(c.routes, key)
	c.rebuildHosts()
	c.mu.Unlock()
	if ok && r.backend != nil {
		r.backend.Fail(WakeFailed, why)
		heldRequests.DeleteLabelValues(key)
	}
}

// rebuildHosts recomputes the Host names of the routes; c.mu must be held.
func (c *Controller) rebuildHosts() {
	c.hosts = map[string]string{}
	short := map[string][]string{}
	for key, r := range c.routes {
		if r.backend == nil {
			continue
		}
		ns, name, _ := cache.SplitMetaNamespaceKey(key)
		for _, h := range []string{name + "." + ns, name + "." + ns + ".svc", name + "." + ns + ".svc." + c.cfg.ClusterDomain} {
			c.hosts[h] = key
		}
		short[name] = append(short[name], key)
	}
	for name, keys := range short {
		if len(keys) == 1 {
			c.hosts[name] = keys[0]
		} else {
			c.hosts[name] = ""
		}
	}
}

// firstReady is the first pod that can take requests: running, ready, on its GPUs and not
// being suspended.
func (c *Controller) firstReady(pods []*v1.Pod) *v1.Pod {
	for _, p := range pods {
		if p.Status.Phase == v1.PodRunning && podReady(p) && gpupod.StateOf(p) == kv1.PodRunning && !c.suspending(p) {
			return p
		}
	}
	return nil
}

func podReady(p *v1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == v1.PodReady {
			return cond.Status == v1.ConditionTrue
		}
	}
	return false
}

// suspending reports whether a Suspend of the pod is requested and not ended.
func (c *Controller) suspending(pod *v1.Pod) bool {
	for _, ck := range c.podCheckpoints(pod) {
		if ck.Spec.Action == kv1.ActionSuspend && !ended(ck) {
			return true
		}
	}
	return false
}

// podCheckpoints are the GPUCheckpoints of this pod (not of an earlier pod of its name).
func (c *Controller) podCheckpoints(pod *v1.Pod) []*kv1.GPUCheckpoint {
	all, err := c.checkpoints.GPUCheckpoints(pod.Namespace).List(labels.Everything())
	if err != nil {
		return nil
	}
	return slices.DeleteFunc(all, func(ck *kv1.GPUCheckpoint) bool {
		return ck.Spec.PodName != pod.Name || (ck.Spec.PodUID != "" && ck.Spec.PodUID != string(pod.UID))
	})
}

func ended(ck *kv1.GPUCheckpoint) bool {
	return ck.Status.Phase == kv1.PhaseSucceeded || ck.Status.Phase == kv1.PhaseFailed
}
