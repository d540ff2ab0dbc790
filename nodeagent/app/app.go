// Package app is the kybernate-agent command: flags, wiring of the node agent's parts, and the
// HTTP endpoints /metrics and /healthz.
//
// On a GPU node (the DaemonSet) it serves the node named by --node-name: GPU inventory from
// NVML, GPU processes mapped to pods through their cgroups, suspend and resume through the
// CUDA driver. With --simulate (one Deployment for a cluster of kwok nodes) it serves every
// node --simulate-node-selector picks with simulated GPU machines (package sim) and says so
// in every GPUNode's Simulated condition.
package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	_ "k8s.io/component-base/logs/json/register" // --logging-format=json
	"k8s.io/component-base/metrics/legacyregistry"
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // rest client metrics
	_ "k8s.io/component-base/metrics/prometheus/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	"github.com/kybernate/kybernate/apis/kybernate/client/informers/externalversions"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/internal/daemon"
	"github.com/kybernate/kybernate/nodeagent/checkpoint"
	"github.com/kybernate/kybernate/nodeagent/controller"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/imagegc"
	"github.com/kybernate/kybernate/nodeagent/inventory"
	"github.com/kybernate/kybernate/nodeagent/podmap"
	"github.com/kybernate/kybernate/nodeagent/server"
	"github.com/kybernate/kybernate/nodeagent/sim"
	"github.com/kybernate/kybernate/nodeagent/status"
	"github.com/kybernate/kybernate/nodeagent/thp"
	"github.com/kybernate/kybernate/nodeagent/tier"
)

// NewCommand returns the kybernate-agent command.
func NewCommand() *cobra.Command {
	o := NewOptions()
	return daemon.Command("kybernate-agent", "Kybernate node agent: reports GPUs, suspends and resumes GPU pods",
		`kybernate-agent runs on every GPU node. It reports the node's GPUs, the pods on them and the host
memory that can hold parked GPU memory in the node's GPUNode, advertises kybernate.io/gpu capacity, and
suspends and resumes GPU pods for GPUCheckpoint objects and its gRPC API.

With --simulate one agent serves many kwok nodes with simulated GPUs; nothing touches a real GPU.`,
		o.Logs, o, func(ctx context.Context) error { return Run(ctx, o) })
}

// Run runs the agent until ctx ends.
func Run(ctx context.Context, o *Options) error {
	engine.RegisterMetrics()
	thp.RegisterMetrics()
	if err := o.startTHP(ctx); err != nil {
		return err
	}

	kube, kyb, err := o.Clients("kybernate-agent")
	if err != nil {
		return err
	}

	var a *agent
	if o.Simulate {
		a, err = newSimulatedAgent(ctx, o, kube, kyb)
	} else {
		a, err = newNodeAgent(ctx, o, kube, kyb)
	}
	if err != nil {
		return err
	}

	var servers daemon.Servers
	defer servers.Shutdown(ctx, 5*time.Second)
	if o.MetricsBindAddress != "" {
		if err := servers.Serve(ctx, o.MetricsBindAddress, "/metrics and /healthz", a.httpHandler(), nil); err != nil {
			return fmt.Errorf("--metrics-bind-address: %w", err)
		}
	}
	return a.run(ctx)
}

// agent is the wiring of one agent process.
type agent struct {
	o        *Options
	kube     kubernetes.Interface
	kyb      versioned.Interface
	reporter *status.Reporter
	// nodeFactory watches the served Nodes, podFactory their pods (all pods with --simulate),
	// gpuNodeFactory their GPUNodes, ckptFactory all GPUCheckpoints.
	nodeFactory    informers.SharedInformerFactory
	podFactory     informers.SharedInformerFactory
	gpuNodeFactory externalversions.SharedInformerFactory
	ckptFactory    externalversions.SharedInformerFactory
	engines        *engineSet
	images         *imageSet
	freezers       *freezerSet
	controller     *controller.Controller
	server         *server.Server
	broadcaster    record.EventBroadcaster
	recorder       record.EventRecorder
	fleet          *sim.Fleet // with --simulate
	nvml           *lazyNVML  // on a GPU node
	tierNodes      *tierNodes
	tiers          *tier.Manager // with --parked-memory-high-water
	// sweeper deletes the spilled images of pods that are gone on a real node with
	// --disk-tier-dir (a Manager without nodes to run the policy on).
	sweeper *tier.Manager
	// recover takes over the node's suspended pods at start (on a GPU node with a driver).
	recover func(ctx context.Context)

	synced atomic.Bool
}

func newAgent(ctx context.Context, o *Options, kube kubernetes.Interface, kyb versioned.Interface, nodeName string) *agent {
	a := &agent{o: o, kube: kube, kyb: kyb, engines: &engineSet{m: map[string]*engine.Engine{}}, images: &imageSet{m: map[string]controller.Images{}},
		freezers:  &freezerSet{m: map[string]controller.Freezer{}},
		tierNodes: &tierNodes{m: map[string]tier.Node{}}}
	var nodeOpts, podOpts []informers.SharedInformerOption
	var gnOpts []externalversions.SharedInformerOption
	if nodeName != "" {
		byName := fields.OneTermEqualSelector("metadata.name", nodeName).String()
		nodeOpts = append(nodeOpts, informers.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.FieldSelector = byName }))
		gnOpts = append(gnOpts, externalversions.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.FieldSelector = byName }))
		onNode := fields.OneTermEqualSelector("spec.nodeName", nodeName).String()
		podOpts = append(podOpts, informers.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.FieldSelector = onNode }))
	} else {
		sel := o.SimulateNodeSelector
		nodeOpts = append(nodeOpts, informers.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.LabelSelector = sel }))
	}
	a.nodeFactory = informers.NewSharedInformerFactoryWithOptions(kube, 0, nodeOpts...)
	a.podFactory = informers.NewSharedInformerFactoryWithOptions(kube, 0, podOpts...)
	a.gpuNodeFactory = externalversions.NewSharedInformerFactoryWithOptions(kyb, 0, gnOpts...)
	a.ckptFactory = externalversions.NewSharedInformerFactory(kyb, 0)

	a.reporter = status.New(status.Config{
		SlotsPerGPU:       o.SlotsPerGPU,
		HostMemoryReserve: o.HostMemoryReserve.Value(),
		HostMemoryStep:    o.HostMemoryStep.Value(),
		MinInterval:       o.StatusMinInterval,
		Simulated:         o.Simulate,
		RestoreMargin:     o.RestoreMargin.Value(),
	}, kube, kyb, a.gpuNodeFactory.Kybernate().V1alpha1().GPUNodes().Lister(), a.nodeFactory.Core().V1().Nodes().Lister(), clock.RealClock{})

	a.broadcaster = record.NewBroadcaster(record.WithContext(ctx))
	host := nodeName
	if o.Simulate {
		host = "simulated"
	}
	a.recorder = a.broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: "kybernate-agent", Host: host})
	op := controller.NewOperator(kube, a.engines, a.recorder, clock.RealClock{}, a.reporter.Trigger)
	if o.CheckpointDir != "" {
		op.SetImages(a.images, o.CheckpointDir)
	}
	op.SetFreezers(a.freezers)
	ckpts := a.ckptFactory.Kybernate().V1alpha1().GPUCheckpoints()
	a.controller = controller.New(controller.Config{LockTimeout: o.LockTimeout}, kube, kyb, ckpts.Lister(),
		a.podFactory.Core().V1().Pods().Lister(), op, clock.RealClock{})
	return a
}

// watchCommon registers the handlers both modes have.
func (a *agent) watchCommon(ctx context.Context) error {
	// A suspended pod that is being deleted has its parked processes ended at once; a deleted
	// pod's suspended state goes with it.
	podOf := func(obj interface{}) (*v1.Pod, bool) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		pod, ok := obj.(*v1.Pod)
		return pod, ok
	}
	op := a.controllerOperator()
	deleted := cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj interface{}) {
			if pod, ok := podOf(obj); ok && pod.DeletionTimestamp != nil {
				op.EndDeleted(ctx, pod)
			}
		},
		DeleteFunc: func(obj interface{}) {
			if pod, ok := podOf(obj); ok {
				op.EndDeleted(ctx, pod)
				if e, ok := a.engines.Engine(pod.Spec.NodeName); ok {
					e.Forget(pod.UID)
				}
			}
		},
	}
	return errors.Join(
		watch(a.nodeFactory.Core().V1().Nodes().Informer(), a.reporter.EventHandler()),
		watch(a.gpuNodeFactory.Kybernate().V1alpha1().GPUNodes().Informer(), a.reporter.EventHandler()),
		watch(a.ckptFactory.Kybernate().V1alpha1().GPUCheckpoints().Informer(), a.controller.EventHandler()),
		watch(a.podFactory.Core().V1().Pods().Informer(), deleted),
		watch(a.podFactory.Core().V1().Pods().Informer(), controller.NewRestoreFromGuard(a.controller.Operator()).EventHandler()),
	)
}

func newNodeAgent(ctx context.Context, o *Options, kube kubernetes.Interface, kyb versioned.Interface) (*agent, error) {
	logger := klog.FromContext(ctx)
	a := newAgent(ctx, o, kube, kyb, o.NodeName)
	pods := a.podFactory.Core().V1().Pods().Informer()
	if err := podmap.AddUIDIndex(pods); err != nil {
		return nil, err
	}
	if err := a.watchCommon(ctx); err != nil {
		return nil, err
	}
	// Pods come and go: the processes on the GPUs map to other pods.
	trigger := func(interface{}) { a.reporter.Trigger(o.NodeName) }
	if err := watch(pods, cache.ResourceEventHandlerFuncs{AddFunc: trigger, DeleteFunc: trigger}); err != nil {
		return nil, err
	}

	a.nvml = &lazyNVML{open: func() (*inventory.NVML, error) { return inventory.Open(nvml.New()) }}
	resolver := &podmap.Resolver{ProcRoot: o.ProcRoot, Pods: podmap.IndexedPods{Indexer: pods.GetIndexer()}}
	// containerd names the pod of a container whose cgroup path carries no pod UID, and
	// writes container checkpoints.
	var runtime *checkpoint.Containerd
	if o.ContainerdSocket != "" {
		if ctr, err := podmap.NewContainerd(o.ContainerdSocket); err != nil {
			logger.Error(err, "containerd not reachable: GPU processes map to pods by their cgroup paths only")
		} else {
			resolver.Containers = ctr
		}
		var err error
		if runtime, err = checkpoint.NewContainerd(o.ContainerdSocket, podmap.ContainerdNamespace); err != nil {
			logger.Error(err, "containerd not reachable: no container checkpoints on this node")
		}
	}
	hostMemory := status.Meminfo{Path: filepath.Join(o.ProcRoot, "meminfo")}
	node := status.Node{Inventory: a.nvml, Pods: resolver, HostMemory: hostMemory}
	srvNode := server.Node{Inventory: a.nvml, Pods: resolver, HostMemory: hostMemory}

	// The CUDA driver: restoring needs cuInit in the caller (or persistence mode).
	drv, err := cuda.New()
	if err == nil {
		err = drv.Init()
	}
	if err != nil {
		logger.Error(err, "CUDA driver not usable: GPU inventory is reported, but suspend and resume are unavailable on this node")
		// Actions on GPU pods here fail at once with this error instead of waiting for nobody.
		a.controllerOperator().SetDriverUnavailable(o.NodeName, err.Error())
	} else {
		e := engine.New(drv, engine.InventoryFinder{Inventory: a.nvml, Pods: resolver}, hostMemory, engine.InventoryMemory{Inventory: a.nvml},
			engine.SignalKiller{}, a.o.engineConfig(), clock.RealClock{})
		a.engines.set(o.NodeName, e)
		a.recover = func(ctx context.Context) { a.recoverNode(ctx, o.NodeName, resolver.PIDsByPod) }
		node.Suspended, srvNode.Engine, srvNode.Suspended = e, e, e
		node.Busy = e.Busy
	}
	if runtime != nil {
		// Pods without GPUs are suspended by freezing their containers (docs/scale-to-zero.md).
		a.freezers.set(o.NodeName, controller.ContainerdFreezer{Runtime: runtime})
		var gpus checkpoint.GPUs
		if srvNode.Engine != nil {
			gpus = srvNode.Engine
		}
		versions := func(ctx context.Context) (string, int32) {
			inv, err := a.nvml.Read(ctx)
			if err != nil {
				return "", 0
			}
			return inv.DriverVersion, inv.CUDADriverVersion
		}
		srvNode.Checkpoints = checkpoint.New(checkpoint.Config{Node: o.NodeName, Timeout: o.DumpTimeout}, runtime, gpus, versions, clock.RealClock{})
		a.images.set(o.NodeName, &controller.ContainerdImages{Checkpointer: srvNode.Checkpoints, Model: a.gpuModel})
	}
	if o.Tiers.DiskDir != "" {
		if srvNode.Checkpoints == nil {
			return nil, fmt.Errorf("--disk-tier-dir: containers cannot be spilled on this node: containerd is not reachable at %s", o.ContainerdSocket)
		}
		if srvNode.Tiers, err = a.containerTiers(ctx, srvNode.Checkpoints); err != nil {
			return nil, err
		}
		if a.tiers != nil {
			a.tierNodes.set(o.NodeName, a.realTierNode(srvNode.Tiers, runtime, srvNode.Engine))
		}
	}
	a.reporter.Add(o.NodeName, node)
	a.server = server.New(server.NodeMap{o.NodeName: srvNode}, a.controllerOperator(), server.APIPods{Client: kube}, o.HostMemoryReserve.Value(), false)
	return a, nil
}

func newSimulatedAgent(ctx context.Context, o *Options, kube kubernetes.Interface, kyb versioned.Interface) (*agent, error) {
	a := newAgent(ctx, o, kube, kyb, "")
	pods := a.podFactory.Core().V1().Pods().Informer()
	if err := sim.AddNodeNameIndex(pods); err != nil {
		return nil, err
	}
	sel, err := labels.Parse(o.SimulateNodeSelector)
	if err != nil {
		return nil, fmt.Errorf("--simulate-node-selector: %w", err)
	}
	nodes := a.nodeFactory.Core().V1().Nodes()
	a.fleet = sim.NewFleet(sim.FleetConfig{Selector: sel, ProgressPeriod: o.SimulateProgressPeriod, ProgressTick: 100 * time.Millisecond},
		kube, a.reporter, nodes.Lister(), pods.GetIndexer(), clock.RealClock{})
	checkpointRate, restoreRate := float64(o.SimulateCheckpointRate.Value()), float64(o.SimulateRestoreRate.Value())
	a.fleet.OnMachine(func(node string, m *sim.Machine) {
		if m == nil {
			a.engines.set(node, nil)
			a.images.set(node, nil)
			a.tierNodes.set(node, tier.Node{})
			return
		}
		drv := &sim.TimedDriver{Driver: m.Driver(), CheckpointRate: checkpointRate, RestoreRate: restoreRate, Clock: clock.RealClock{}}
		e := engine.New(drv, m, m, m, m, a.o.engineConfig(), clock.RealClock{})
		a.engines.set(node, e)
		// GPUCheckpoints for the node that came before its machine were left as another
		// agent's: take them on now.
		a.controller.RequeueUnfinished()
		// Images are written at the checkpoint rate too: host memory to the shared folder.
		imgs := &sim.Images{Machine: m, Engine: e, WriteRate: checkpointRate, Clock: clock.RealClock{}}
		a.images.set(node, imgs)
		a.tierNodes.set(node, tier.Node{Engine: e, Images: imgs, End: m.End, Memory: m.HostMemory})
		if a.tiers != nil {
			m.SetTiered(func() []kv1.PodGPUUsage { return a.tiers.SuspendedPods(node) })
		}
	})
	if o.Tiers.Enabled() {
		if a.tiers, err = a.newTiers(ctx); err != nil {
			return nil, err
		}
		a.controllerOperator().SetTiers(a.tiers)
	}
	if err := errors.Join(a.watchCommon(ctx), watch(nodes.Informer(), a.fleet.NodeEventHandler()), watch(pods, a.fleet.PodEventHandler())); err != nil {
		return nil, err
	}
	a.server = server.New(simNodes{fleet: a.fleet, engines: a.engines}, a.controllerOperator(), server.APIPods{Client: kube}, o.HostMemoryReserve.Value(), true)
	return a, nil
}

// controllerOperator is the Operator the controller uses, shared with the gRPC server so that
// both keep the pod's annotations, condition and events the same way.
func (a *agent) controllerOperator() *controller.Operator { return a.controller.Operator() }

func watch(informer cache.SharedIndexInformer, h cache.ResourceEventHandler) error {
	if _, err := informer.AddEventHandler(h); err != nil {
		return fmt.Errorf("watching: %w", err)
	}
	return nil
}

// informerSyncTimeout bounds the wait for the first lists at start.
const informerSyncTimeout = 2 * time.Minute

func (a *agent) run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	if a.o.Simulate {
		logger.Info("Starting kybernate-agent in SIMULATE mode: GPUs, GPU processes and checkpoints are simulated; nothing touches a real GPU",
			"simulated", true, "nodeSelector", a.o.SimulateNodeSelector, "slotsPerGPU", a.o.SlotsPerGPU,
			"checkpointRate", a.o.SimulateCheckpointRate.String(), "restoreRate", a.o.SimulateRestoreRate.String())
	} else {
		logger.Info("Starting kybernate-agent", "node", a.o.NodeName, "slotsPerGPU", a.o.SlotsPerGPU)
	}
	a.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.kube.CoreV1().Events("")})
	defer a.broadcaster.Shutdown()

	a.nodeFactory.Start(ctx.Done())
	a.podFactory.Start(ctx.Done())
	a.gpuNodeFactory.Start(ctx.Done())
	a.ckptFactory.Start(ctx.Done())
	syncCtx, cancel := context.WithTimeout(ctx, informerSyncTimeout)
	defer cancel()
	var notSynced []string
	notSynced = append(notSynced, unsynced(a.nodeFactory.WaitForCacheSync(syncCtx.Done()))...)
	notSynced = append(notSynced, unsynced(a.podFactory.WaitForCacheSync(syncCtx.Done()))...)
	notSynced = append(notSynced, unsynced(a.gpuNodeFactory.WaitForCacheSync(syncCtx.Done()))...)
	notSynced = append(notSynced, unsynced(a.ckptFactory.WaitForCacheSync(syncCtx.Done()))...)
	if len(notSynced) > 0 {
		return fmt.Errorf("listing %v timed out after %v: are the CRDs installed (manifests/crds) and may the agent list and watch them (manifests/agent)?", notSynced, informerSyncTimeout)
	}
	if a.recover != nil {
		a.recover(ctx)
	}
	a.synced.Store(true)

	var wg sync.WaitGroup
	runCtx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	wg.Go(func() { a.reporter.Run(runCtx, 2) })
	if a.fleet != nil {
		// Every node's machine first: the controller serves only nodes with an engine.
		if err := a.fleet.SyncAll(runCtx); err != nil {
			logger.Error(err, "Simulating some nodes failed; retrying", "simulated", true)
		}
		wg.Go(func() { a.fleet.Run(runCtx, 2) })
	}
	if a.tiers != nil {
		// Before the controller acts: a resume of a pod an earlier agent spilled comes from its tier.
		a.tiers.Recover(runCtx)
	}
	wg.Go(func() { a.controller.Run(runCtx, a.o.Workers) })
	if a.tiers != nil {
		logger.Info("Storage tiers on", "highWater", a.o.Tiers.HighWater.String(), "diskTierDir", a.o.Tiers.DiskDir,
			"diskTierIdle", a.o.Tiers.DiskIdle, "diskTierHighWater", a.o.Tiers.DiskHighWater.String(), "objectStore", a.o.ObjectStoreSecret != "",
			"sweepInterval", a.o.Tiers.SweepInterval, "orphanGrace", a.o.Tiers.OrphanGrace)
		wg.Go(func() { a.tiers.Run(runCtx) })
	}
	if a.sweeper != nil {
		// No node is the policy's here: only the sweep of images whose pod is gone runs.
		wg.Go(func() { a.sweeper.Run(runCtx) })
	}
	if a.o.CheckpointDir != "" {
		gc := imagegc.New(imagegc.Config{Root: a.o.CheckpointDir, TTL: a.o.ImageTTL, Interval: a.o.ImageGCInterval}, a.kube,
			a.ckptFactory.Kybernate().V1alpha1().GPUCheckpoints().Lister(), a.serves, a.o.NodeName, a.recorder, clock.RealClock{})
		wg.Go(func() { gc.Run(runCtx) })
	}
	if a.o.Socket != "" {
		a.server.SetImageRoot(a.o.CheckpointDir)
		wg.Go(func() {
			if err := server.Serve(runCtx, a.o.Socket, a.server); err != nil {
				logger.Error(err, "Agent API failed", "socket", a.o.Socket)
			}
		})
	}
	// NVML has no events for memory use: poll it. Writes still happen on change only.
	wg.Go(func() {
		t := time.NewTicker(a.o.PollInterval)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				a.reporter.TriggerAll()
			}
		}
	})

	<-ctx.Done()
	logger.Info("Stopping kybernate-agent")
	stopAll()
	wg.Wait()
	stopCtx, cancelStop := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancelStop()
	a.reporter.MarkStopped(stopCtx)
	if a.nvml != nil {
		a.nvml.Close()
	}
	return nil
}

func unsynced[K interface {
	comparable
	fmt.Stringer
}](m map[K]bool) []string {
	var out []string
	for t, ok := range m {
		if !ok {
			out = append(out, t.String())
		}
	}
	return out
}

func (a *agent) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", legacyregistry.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.synced.Load() {
			http.Error(w, "informers not synced yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	return mux
}

// imageSet holds the checkpoint images of each served node.
type imageSet struct {
	mu sync.RWMutex
	m  map[string]controller.Images
}

var _ controller.ImageStores = (*imageSet)(nil)

func (s *imageSet) Images(node string) (controller.Images, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	i, ok := s.m[node]
	return i, ok
}

// set sets node's images; nil removes them.
func (s *imageSet) set(node string, i controller.Images) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i == nil {
		delete(s.m, node)
		return
	}
	s.m[node] = i
}

// engineSet holds the engine of each served node.
// serves reports whether the agent serves node: its own node, or a simulated one.
func (a *agent) serves(node string) bool {
	_, ok := a.engines.Engine(node)
	return ok || node == a.o.NodeName
}

type engineSet struct {
	mu sync.RWMutex
	m  map[string]*engine.Engine
}

var _ controller.Engines = (*engineSet)(nil)

func (s *engineSet) Engine(node string) (*engine.Engine, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.m[node]
	return e, ok
}

// set sets node's engine; nil removes it.
func (s *engineSet) set(node string, e *engine.Engine) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e == nil {
		delete(s.m, node)
		return
	}
	s.m[node] = e
}

// simNodes are the simulated nodes, for the gRPC server.
type simNodes struct {
	fleet   *sim.Fleet
	engines *engineSet
}

func (n simNodes) Node(name string) (server.Node, bool) {
	m, ok := n.fleet.Machine(name)
	if !ok {
		return server.Node{}, false
	}
	e, _ := n.engines.Engine(name)
	return server.Node{Inventory: m.Inventory(), Pods: m, Engine: e, Suspended: m, HostMemory: m}, true
}

func (n simNodes) Names() []string {
	var out []string
	for _, name := range n.fleet.Nodes() {
		if _, ok := n.fleet.Machine(name); ok {
			out = append(out, name)
		}
	}
	return out
}

// lazyNVML opens NVML on first use and again after failures, so that an agent started before
// the driver is loaded reports the error in the GPUNode and recovers without a restart.
type lazyNVML struct {
	open func() (*inventory.NVML, error)
	mu   sync.Mutex
	src  *inventory.NVML
}

func (l *lazyNVML) Read(ctx context.Context) (*inventory.Inventory, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.src == nil {
		src, err := l.open()
		if err != nil {
			return nil, err
		}
		l.src = src
	}
	return l.src.Read(ctx)
}

func (l *lazyNVML) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.src != nil {
		_ = l.src.Close()
		l.src = nil
	}
}
