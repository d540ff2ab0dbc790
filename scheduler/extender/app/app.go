// Package app builds the kybernate-extender command: Kybernate's scheduler extender served over
// HTTP(S) for a stock kube-scheduler, with health and metrics endpoints, and Kybernate's
// controllers (resume, time slicing, migration) started beside it through controllers.Manager,
// as kybernate-scheduler starts them.
package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/server"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"
	"k8s.io/component-base/logs"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"

	"github.com/kybernate/kybernate/apis/config"
	configscheme "github.com/kybernate/kybernate/apis/config/scheme"
	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	"github.com/kybernate/kybernate/apis/kybernate/client/informers/externalversions"
	"github.com/kybernate/kybernate/apis/kybernate/connect"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/controllers"
	"github.com/kybernate/kybernate/scheduler/extender"
)

// Name is the program's name, and the reporting controller of its Events.
const Name = "kybernate-extender"

// Options are the command's flags.
type Options struct {
	Kubeconfig        string
	BindAddress       string
	TLSCertFile       string
	TLSKeyFile        string
	ScoringStrategy   string
	DefaultMinRuntime time.Duration
	ControllersConfig string
	KubeAPIQPS        float32
	KubeAPIBurst      int
	Logs              *logsapi.LoggingConfiguration
}

// NewCommand returns the kybernate-extender command.
func NewCommand() *cobra.Command {
	o := &Options{Logs: logsapi.NewLoggingConfiguration(), KubeAPIQPS: 100, KubeAPIBurst: 200}
	cmd := &cobra.Command{
		Use: Name,
		Long: `kybernate-extender is Kybernate's HTTP scheduler extender: a stock kube-scheduler configured with it
places GPU pods (kybernate.io/gpu) on individual GPUs and makes room by suspending lower-priority GPU pods.
It also runs Kybernate's resume, time-slice and migration controllers. See docs/extender.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := logsapi.ValidateAndApply(o.Logs, nil); err != nil {
				return err
			}
			return Run(server.SetupSignalContext(), o)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "Path to a kubeconfig; in-cluster configuration without.")
	fs.StringVar(&o.BindAddress, "bind-address", ":8888", "Address of the extender's verbs (/filter, /prioritize, /preempt, /bind), /healthz, /readyz and /metrics.")
	fs.StringVar(&o.TLSCertFile, "tls-cert-file", "", "Serve HTTPS with this certificate (with --tls-private-key-file); HTTP without.")
	fs.StringVar(&o.TLSKeyFile, "tls-private-key-file", "", "The private key of --tls-cert-file.")
	fs.StringVar(&o.ScoringStrategy, "scoring-strategy", string(config.MostAllocated), "MostAllocated (bin-pack GPUs) or LeastAllocated (spread), as GPUShare's scoringStrategy.")
	fs.DurationVar(&o.DefaultMinRuntime, "default-min-runtime", 5*time.Minute, "How long a GPU pod runs after a resume before a preemptor may suspend it, unless it sets kybernate.io/min-runtime.")
	fs.StringVar(&o.ControllersConfig, "controllers-config", "", "The ControllerConfiguration (config.kybernate.io/v1) of the resume, time-slice and migration controllers; defaults without.")
	fs.Float32Var(&o.KubeAPIQPS, "kube-api-qps", o.KubeAPIQPS, "Queries per second to the API server (binds, reads, the controllers' writes).")
	fs.IntVar(&o.KubeAPIBurst, "kube-api-burst", o.KubeAPIBurst, "Burst of queries to the API server.")
	logsapi.AddFlags(o.Logs, fs)
	logs.AddFlags(fs, logs.SkipLoggingConfigurationFlags())
	return cmd
}

// Validate checks the flags that need no cluster.
func (o *Options) Validate() error {
	var errs []error
	if (o.TLSCertFile == "") != (o.TLSKeyFile == "") {
		errs = append(errs, errors.New("--tls-cert-file and --tls-private-key-file go together"))
	}
	switch config.ScoringStrategyType(o.ScoringStrategy) {
	case config.MostAllocated, config.LeastAllocated:
	default:
		errs = append(errs, fmt.Errorf("--scoring-strategy %q: want %s or %s", o.ScoringStrategy, config.MostAllocated, config.LeastAllocated))
	}
	if o.KubeAPIQPS <= 0 || o.KubeAPIBurst <= 0 {
		errs = append(errs, fmt.Errorf("--kube-api-qps %v and --kube-api-burst %d must be positive", o.KubeAPIQPS, o.KubeAPIBurst))
	}
	if o.DefaultMinRuntime < 0 {
		errs = append(errs, fmt.Errorf("--default-min-runtime %v is negative", o.DefaultMinRuntime))
	}
	return errors.Join(errs...)
}

// Run serves the extender and runs the controllers until ctx ends.
func Run(ctx context.Context, o *Options) error {
	if err := o.Validate(); err != nil {
		return err
	}
	// Read before anything starts: a bad file stops the program with the field it names.
	ctrlCfg, err := configscheme.LoadControllerConfiguration(o.ControllersConfig)
	if err != nil {
		return err
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	if err != nil {
		return fmt.Errorf("loading the client configuration: %w", err)
	}
	restCfg = rest.CopyConfig(restCfg)
	restCfg.UserAgent = Name
	restCfg.QPS, restCfg.Burst = o.KubeAPIQPS, o.KubeAPIBurst
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	kyb, err := versioned.NewForConfig(connect.CRDConfig(restCfg))
	if err != nil {
		return fmt.Errorf("creating kybernate client: %w", err)
	}
	ready, handler, err := Build(ctx, o, ctrlCfg, client, kyb)
	if err != nil {
		return err
	}
	return Serve(ctx, o, ready, handler)
}

// Build wires the extender and the controllers on one set of informers and starts them; ready
// reports whether the informers have synced. The returned handler serves everything.
func Build(ctx context.Context, o *Options, ctrlCfg *config.ControllerConfiguration, client kubernetes.Interface, kyb versioned.Interface) (func() bool, http.Handler, error) {
	logger := klog.FromContext(ctx)
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	broadcaster.StartRecordingToSink(ctx.Done())
	recorder := broadcaster.NewRecorder(scheme.Scheme, Name)

	factory := informers.NewSharedInformerFactory(client, 0)
	podInformer := factory.Core().V1().Pods().Informer()
	if err := extender.AddIndexes(podInformer); err != nil {
		return nil, nil, err
	}
	kfactory := externalversions.NewSharedInformerFactory(kyb, 0)
	gpuNodes, checkpoints := kfactory.Kybernate().V1alpha1().GPUNodes(), kfactory.Kybernate().V1alpha1().GPUCheckpoints()
	gpuNodes.Informer()
	checkpoints.Informer()

	api := extender.API{
		Bind: func(ctx context.Context, b *v1.Binding) error {
			return client.CoreV1().Pods(b.Namespace).Bind(ctx, b, metav1.CreateOptions{})
		},
		GetPod: func(ctx context.Context, ns, name string) (*v1.Pod, error) {
			return client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		},
		CreateCheckpoint: func(ctx context.Context, ck *kv1.GPUCheckpoint) error {
			_, err := kyb.KybernateV1alpha1().GPUCheckpoints(ck.Namespace).Create(ctx, ck, metav1.CreateOptions{})
			return err
		},
	}
	// One ledger of GPU placements for the extender's binds and the controllers: each sees
	// what the other placed before the informers show it.
	ledger := gpupod.NewLedger()
	if err := ledger.Watch(podInformer); err != nil {
		return nil, nil, err
	}
	ext, err := extender.New(extender.Options{Strategy: config.ScoringStrategyType(o.ScoringStrategy), DefaultMinRuntime: o.DefaultMinRuntime},
		api, podInformer, gpuNodes.Lister(), checkpoints.Informer().GetIndexer(), recorder, ledger)
	if err != nil {
		return nil, nil, err
	}
	extender.RegisterMetrics()
	mgr, err := controllers.New(controllers.Deps{Client: client, Kybernate: kyb, Informers: factory, KybernateInformers: kfactory, Recorder: recorder, Ledger: ledger}, ctrlCfg)
	if err != nil {
		return nil, nil, err
	}
	factory.Start(ctx.Done())
	if err := connect.StartInformers(ctx, kfactory); err != nil {
		return nil, nil, err
	}
	if err := mgr.Start(ctx); err != nil {
		return nil, nil, fmt.Errorf("starting the controllers: %w", err)
	}
	logger.Info("Extender wired", "scoringStrategy", o.ScoringStrategy, "controllers", mgr.Controllers())

	mux := http.NewServeMux()
	mux.Handle("/", ext.Handler())
	ready := func() bool {
		return podInformer.HasSynced() && gpuNodes.Informer().HasSynced() && checkpoints.Informer().HasSynced()
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "informers not synced", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	mux.Handle("/metrics", legacyregistry.Handler())
	return ready, mux, nil
}

// Serve serves the handler on o.BindAddress (HTTPS with a certificate) until ctx ends.
func Serve(ctx context.Context, o *Options, _ func() bool, handler http.Handler) error {
	logger := klog.FromContext(ctx)
	srv := &http.Server{Addr: o.BindAddress, Handler: handler, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	errCh := make(chan error, 1)
	go func() {
		logger.Info("Serving the extender", "address", o.BindAddress, "tls", o.TLSCertFile != "")
		if o.TLSCertFile != "" {
			errCh <- srv.ListenAndServeTLS(o.TLSCertFile, o.TLSKeyFile)
		} else {
			errCh <- srv.ListenAndServe()
		}
	}()
	select {
	case err := <-errCh:
		return fmt.Errorf("serving on %s: %w", o.BindAddress, err)
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(shutCtx)
}
