package resume

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"

	"github.com/kybernate/kybernate/apis/config"
	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kinformers "github.com/kybernate/kybernate/apis/kybernate/client/informers/externalversions/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/scheduler/migrate"
	"github.com/kybernate/kybernate/scheduler/timeslice"
)

// LeaseName is the Lease that elects, among scheduler replicas, the one that runs the resume,
// time-slice and migration controllers: all decide which pods are on which GPUs, so one
// process runs them.
const LeaseName = "kybernate-resume-controller"

// DefaultLeaseNamespace holds the Lease unless $POD_NAMESPACE names another.
const DefaultLeaseNamespace = "kybernate-system"

var startOnce sync.Once

// Start wires the resume and time-slice controllers to the informers (before they start) and
// runs them under their own leader election until ctx ends. Several scheduler profiles may ask;
// one pair runs, with the args of the first.
func Start(ctx context.Context, client kubernetes.Interface, kybernate versioned.Interface, pods coreinformers.PodInformer,
	nodes coreinformers.NodeInformer, gpuNodes kinformers.GPUNodeInformer, checkpoints kinformers.GPUCheckpointInformer, recorder events.EventRecorder,
	args config.CheckpointPreemptionArgs) error {
	var err error
	startOnce.Do(func() {
		var c *Controller
		if c, err = New(client, kybernate, pods, gpuNodes, checkpoints, recorder); err != nil {
			return
		}
		var ts *timeslice.Controller
		if ts, err = timeslice.New(client, kybernate, pods, gpuNodes, checkpoints, recorder, args); err != nil {
			return
		}
		var mc *migrate.Controller
		if mc, err = migrate.New(client, kybernate, pods, nodes, gpuNodes, checkpoints, recorder, args); err != nil {
			return
		}
		legacyregistry.CustomMustRegister(NewCollector(gpuNodes.Lister()))
		timeslice.RegisterMetrics()
		migrate.RegisterMetrics()
		namespace := os.Getenv("POD_NAMESPACE")
		if namespace == "" {
			namespace = DefaultLeaseNamespace
		}
		host, _ := os.Hostname()
		lock := &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: namespace, Name: LeaseName},
			Client:     client.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: fmt.Sprintf("%s_%s", host, uuid.NewUUID())},
		}
		logger := klog.FromContext(ctx).WithName("resume")
		ctx = klog.NewContext(ctx, logger)
		go func() {
			defer c.queue.ShutDown()
			defer ts.ShutDown()
			defer mc.ShutDown()
			for ctx.Err() == nil {
				leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
					Lock:            lock,
					ReleaseOnCancel: true,
					LeaseDuration:   15 * time.Second,
					RenewDeadline:   10 * time.Second,
					RetryPeriod:     2 * time.Second,
					Name:            LeaseName,
					Callbacks: leaderelection.LeaderCallbacks{
						OnStartedLeading: func(ctx context.Context) {
							go ts.Run(klog.NewContext(ctx, klog.FromContext(ctx).WithName("timeslice")), 1)
							go mc.Run(klog.NewContext(ctx, klog.FromContext(ctx).WithName("migrate")), 1)
							c.Run(ctx, 2)
						},
						OnStoppedLeading: func() { logger.Info("Lost the resume controller lease") },
					},
				})
			}
		}()
	})
	return err
}
