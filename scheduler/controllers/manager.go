// Package controllers starts Kybernate's scheduler-side controllers (resume, time slicing,
// migration, spreading) under one leader election, from an explicit, validated ControllerConfiguration.
// kybernate-scheduler calls Start from its own wiring (scheduler/app) on kube-scheduler's
// informer factory; another program, such as an extender that runs without Kybernate's
// plugins, calls it the same way. Nothing here starts as a side effect of a plugin.
package controllers

import (
	"context"
	"fmt"
	"os"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"

	"github.com/kybernate/kybernate/apis/config"
	"github.com/kybernate/kybernate/apis/config/validation"
	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	"github.com/kybernate/kybernate/apis/kybernate/client/informers/externalversions"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/apis/kybernate/connect"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/migrate"
	"github.com/kybernate/kybernate/scheduler/resume"
	"github.com/kybernate/kybernate/scheduler/spread"
	"github.com/kybernate/kybernate/scheduler/timeslice"
)

// Deps are what the controllers run on, owned by the calling program.
type Deps struct {
	// Client and Kybernate talk to the API server (Kybernate with connect.CRDConfig).
	Client    kubernetes.Interface
	Kybernate versioned.Interface
	// Informers is the program's core informer factory (kube-scheduler's): the controllers
	// register their pod and node informers on it, and the program starts it.
	Informers informers.SharedInformerFactory
	// KybernateInformers is the program's kybernate.io informer factory, when it shares one
	// with its plugins or its own code (connect.Shared): the controllers register their
	// GPUNode and GPUCheckpoint informers on it. Without it the Manager builds its own.
	KybernateInformers externalversions.SharedInformerFactory
	// Recorder records the controllers' Events; the program starts its broadcaster.
	Recorder events.EventRecorder
	// Identity names this replica in the Lease; hostname_uuid when empty.
	Identity string
	// Ledger is the program's record of GPU placements its informers may not show yet, shared
	// with whatever else places GPU pods in the program (GPUShare, the extender's bind); the
	// program keeps it up to date from its pod informer (gpupod.Ledger.Watch). The resume and
	// migration controllers reserve in it the memory of the pods they resume and restore.
	// When nil the controllers share a ledger of their own.
	Ledger *gpupod.Ledger
}

// runner is one controller: Run until ctx ends, ShutDown when the manager stops.
type runner interface {
	Run(ctx context.Context, workers int)
	ShutDown()
}

// named is a controller with the name its logs carry and how many workers it gets.
type named struct {
	name    string
	workers int
	runner
}

// Manager runs the enabled controllers while this replica holds the Lease.
type Manager struct {
	cfg         config.ControllerConfiguration
	deps        Deps
	controllers []named
	factory     externalversions.SharedInformerFactory
}

// New validates cfg and builds the enabled controllers, registering their informers on
// deps.Informers and on deps.KybernateInformers (or a GPUNode/GPUCheckpoint informer factory
// of its own). Call it before deps.Informers starts.
func New(deps Deps, cfg *config.ControllerConfiguration) (*Manager, error) {
	if err := validation.ValidateControllerConfiguration(cfg); err != nil {
		return nil, fmt.Errorf("invalid controller configuration: %w", err)
	}
	factory := deps.KybernateInformers
	if factory == nil {
		factory = externalversions.NewSharedInformerFactory(deps.Kybernate, 0)
	}
	gpuNodes := factory.Kybernate().V1alpha1().GPUNodes()
	checkpoints := factory.Kybernate().V1alpha1().GPUCheckpoints()
	gpuNodes.Informer() // registered before the factory starts, whatever is enabled
	checkpoints.Informer()
	pods, nodes := deps.Informers.Core().V1().Pods(), deps.Informers.Core().V1().Nodes()
	if deps.Ledger == nil {
		deps.Ledger = gpupod.NewLedger()
		if err := deps.Ledger.Watch(pods.Informer()); err != nil {
			return nil, err
		}
	}
	m := &Manager{cfg: *cfg, deps: deps, factory: factory}
	if !cfg.DisableResume {
		c, err := resume.New(deps.Client, deps.Kybernate, pods, gpuNodes, checkpoints, deps.Recorder, *cfg, deps.Ledger)
		if err != nil {
			return nil, fmt.Errorf("resume controller: %w", err)
		}
		m.controllers = append(m.controllers, named{"resume", 2, c})
	}
	if !cfg.DisableTimeSlicing {
		c, err := timeslice.New(deps.Client, deps.Kybernate, pods, gpuNodes, checkpoints, deps.Recorder, *cfg)
		if err != nil {
			return nil, fmt.Errorf("time-slice controller: %w", err)
		}
		m.controllers = append(m.controllers, named{"timeslice", 1, c})
	}
	if !cfg.DisableMigration {
		c, err := migrate.New(deps.Client, deps.Kybernate, pods, nodes, gpuNodes, checkpoints, deps.Recorder, *cfg, deps.Ledger)
		if err != nil {
			return nil, fmt.Errorf("migration controller: %w", err)
		}
		m.controllers = append(m.controllers, named{"migrate", 1, c})
	}
	// The resume controller brings a spread pod back: without it, nothing spreads.
	if !cfg.DisableSpreading && !cfg.DisableResume {
		c, err := spread.New(deps.Kybernate, pods, nodes, gpuNodes, checkpoints, deps.Recorder, *cfg, deps.Ledger)
		if err != nil {
			return nil, fmt.Errorf("spreading controller: %w", err)
		}
		m.controllers = append(m.controllers, named{"spread", 1, c})
	}
	registerMetrics(gpuNodes.Lister())
	return m, nil
}

// Controllers lists the names of the enabled controllers.
func (m *Manager) Controllers() []string {
	out := make([]string, len(m.controllers))
	for i, c := range m.controllers {
		out[i] = c.name
	}
	return out
}

// Start starts and syncs the GPUNode and GPUCheckpoint informers (a minute at most) and runs
// the controllers in the background until ctx ends: under leader election, or at once when
// it is off. The program's core informers must be started too.
func (m *Manager) Start(ctx context.Context) error {
	if err := connect.StartInformers(ctx, m.factory); err != nil {
		return err
	}
	logger := klog.FromContext(ctx).WithName("controllers")
	ctx = klog.NewContext(ctx, logger)
	logger.Info("Starting controllers", "controllers", m.Controllers(), "leaderElect", m.cfg.LeaderElection.LeaderElect,
		"lease", klog.KRef(m.cfg.LeaderElection.ResourceNamespace, m.cfg.LeaderElection.ResourceName))
	if !m.cfg.LeaderElection.LeaderElect {
		go func() {
			m.run(ctx)
			m.shutDown()
		}()
		return nil
	}
	le, err := m.leaderElection(logger)
	if err != nil {
		return err
	}
	go func() {
		defer m.shutDown()
		for ctx.Err() == nil {
			leaderelection.RunOrDie(ctx, le)
		}
	}()
	return nil
}

// Start builds a Manager and starts it: New then Start.
func Start(ctx context.Context, deps Deps, cfg *config.ControllerConfiguration) (*Manager, error) {
	m, err := New(deps, cfg)
	if err != nil {
		return nil, err
	}
	return m, m.Start(ctx)
}

func (m *Manager) leaderElection(logger klog.Logger) (leaderelection.LeaderElectionConfig, error) {
	le := m.cfg.LeaderElection
	id := m.deps.Identity
	if id == "" {
		host, err := os.Hostname()
		if err != nil {
			return leaderelection.LeaderElectionConfig{}, fmt.Errorf("naming this replica for the lease: %w", err)
		}
		id = fmt.Sprintf("%s_%s", host, uuid.NewUUID())
	}
	return leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: le.ResourceNamespace, Name: le.ResourceName},
			Client:     m.deps.Client.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: id},
		},
		ReleaseOnCancel: true,
		LeaseDuration:   le.LeaseDuration.Duration,
		RenewDeadline:   le.RenewDeadline.Duration,
		RetryPeriod:     le.RetryPeriod.Duration,
		Name:            le.ResourceName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: m.run,
			OnStoppedLeading: func() { logger.Info("Lost the controllers' lease") },
		},
	}, nil
}

// run runs every enabled controller until ctx ends.
func (m *Manager) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, c := range m.controllers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Run(klog.NewContext(ctx, klog.FromContext(ctx).WithName(c.name)), c.workers)
		}()
	}
	wg.Wait()
}

func (m *Manager) shutDown() {
	for _, c := range m.controllers {
		c.ShutDown()
	}
}

var registerOnce sync.Once

// registerMetrics registers the controllers' metrics with the scheduler's registry, once per
// process (the registry is the process's).
func registerMetrics(gpuNodes listers.GPUNodeLister) {
	registerOnce.Do(func() {
		legacyregistry.CustomMustRegister(resume.NewCollector(gpuNodes))
		resume.RegisterMetrics()
	})
	timeslice.RegisterMetrics()
	migrate.RegisterMetrics()
	spread.RegisterMetrics()
}
