// Package app builds the kybernate-scheduler command: kube-scheduler's own scheduler with
// Kybernate's plugins registered and their args in the scheduler's configuration scheme, and
// Kybernate's controllers (resume, time slicing, migration) started beside it, on the same
// informers, from the ControllerConfiguration of --controllers-config.
package app

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/apiserver/pkg/server"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/cli/globalflag"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/component-base/featuregate"
	"k8s.io/component-base/logs"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/component-base/term"
	"k8s.io/component-base/version/verflag"
	"k8s.io/klog/v2"
	schedapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	schedconfig "k8s.io/kubernetes/cmd/kube-scheduler/app/config"
	"k8s.io/kubernetes/cmd/kube-scheduler/app/options"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	"sigs.k8s.io/scheduler-plugins/pkg/coscheduling"

	"github.com/kybernate/kybernate/apis/config"
	configscheme "github.com/kybernate/kybernate/apis/config/scheme" // also our plugin args in the scheduler's scheme
	"github.com/kybernate/kybernate/apis/kybernate/connect"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/plugins/checkpointpreemption"
	"github.com/kybernate/kybernate/plugins/gpufit"
	"github.com/kybernate/kybernate/plugins/gpushare"
	"github.com/kybernate/kybernate/scheduler/controllers"
)

// Name is the program's name, and the reporting controller of the controllers' Events.
const Name = "kybernate-scheduler"

// Plugins are the out-of-tree plugins kybernate-scheduler can enable in a profile. GPUShare
// places on the program's ledger, which the controllers share, and Kybernate's plugins take
// their kybernate.io informers from shared, which the controllers use too: one GPUNode and one
// GPUCheckpoint informer per process, whatever the number of profiles.
func Plugins(ledger *gpupod.Ledger, shared *connect.Shared) frameworkruntime.Registry {
	return frameworkruntime.Registry{
		gpushare.Name:             gpushare.NewFactory(ledger, shared),
		checkpointpreemption.Name: checkpointpreemption.NewShared(shared),
		// NodeResourcesFit without kybernate.io/gpu, which GPUShare accounts.
		gpufit.Name: gpufit.New,
		// Gangs of GPU pods that must start together (needs scheduler-plugins' PodGroup CRD).
		coscheduling.Name: coscheduling.New,
	}
}

// NewCommand returns the kybernate-scheduler command: kube-scheduler's flags, and
// --controllers-config.
func NewCommand() *cobra.Command {
	opts := options.NewOptions()
	var controllersConfig string
	cmd := &cobra.Command{
		Use: Name,
		Long: `kybernate-scheduler is kube-scheduler with Kybernate's plugins (GPUShare, CheckpointPreemption,
Coscheduling), and Kybernate's controllers that resume, time-slice and migrate suspended GPU pods.`,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return opts.ComponentGlobalsRegistry.Set() // feature gates before RunE
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd, opts, controllersConfig)
		},
		Args: cobra.NoArgs,
	}
	nfs := opts.Flags
	verflag.AddFlags(nfs.FlagSet("global"))
	globalflag.AddGlobalFlags(nfs.FlagSet("global"), cmd.Name(), logs.SkipLoggingConfigurationFlags())
	nfs.FlagSet("kybernate").StringVar(&controllersConfig, "controllers-config", "",
		"The ControllerConfiguration (config.kybernate.io/v1) of the resume, time-slice and migration controllers; defaults without.")
	fs := cmd.Flags()
	for _, f := range nfs.FlagSets {
		fs.AddFlagSet(f)
	}
	cols, _, _ := term.TerminalSize(cmd.OutOrStdout())
	cliflag.SetUsageAndHelpFunc(cmd, *nfs, cols)
	for _, f := range []string{"config", "controllers-config"} {
		if err := cmd.MarkFlagFilename(f, "yaml", "yml", "json"); err != nil {
			klog.Background().Error(err, "Failed to mark flag filename", "flag", f)
		}
	}
	return cmd
}

// run is kube-scheduler's runCommand with the controllers started between Setup and Run.
func run(cmd *cobra.Command, opts *options.Options, controllersConfig string) error {
	verflag.PrintAndExitIfRequested()
	fg := opts.ComponentGlobalsRegistry.FeatureGateFor(basecompatibility.DefaultKubeComponent)
	if err := logsapi.ValidateAndApply(opts.Logs, fg); err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
		os.Exit(1)
	}
	cliflag.PrintFlags(cmd.Flags())
	// Read before anything starts: a bad file stops the program with the field it names.
	ctrlCfg, err := configscheme.LoadControllerConfiguration(controllersConfig)
	if err != nil {
		return err
	}
	ctx := server.SetupSignalContext()

	shared := &connect.Shared{}
	// One ledger of GPU placements for GPUShare and the controllers: each sees what the
	// other placed before the informers show it.
	ledger := gpupod.NewLedger()
	var registry []schedapp.Option
	for name, factory := range Plugins(ledger, shared) {
		registry = append(registry, schedapp.WithPlugin(name, factory))
	}
	cc, sched, err := schedapp.Setup(ctx, opts, registry...)
	if err != nil {
		return err
	}
	if err := ledger.Watch(cc.InformerFactory.Core().V1().Pods().Informer()); err != nil {
		return err
	}
	if err := StartControllers(ctx, cc, ctrlCfg, ledger, shared); err != nil {
		return err
	}
	fg.(featuregate.MutableFeatureGate).AddMetrics()
	opts.ComponentGlobalsRegistry.AddMetrics()
	return schedapp.Run(ctx, cc, sched)
}

// StartControllers starts Kybernate's controllers on the scheduler's clients, informers, event
// broadcaster and ledger of GPU placements (the scheduler's Run starts those), and on the
// kybernate.io client and informers the plugins share.
func StartControllers(ctx context.Context, cc *schedconfig.CompletedConfig, cfg *config.ControllerConfiguration, ledger *gpupod.Ledger, shared *connect.Shared) error {
	kybernate, kinformers, err := shared.Get(cc.KubeConfig)
	if err != nil {
		return err
	}
	deps := controllers.Deps{
		Client:             cc.Client,
		Kybernate:          kybernate,
		Informers:          cc.InformerFactory,
		KybernateInformers: kinformers,
		Recorder:           cc.EventBroadcaster.NewRecorder(Name),
		Ledger:             ledger,
	}
	if _, err := controllers.Start(ctx, deps, cfg); err != nil {
		return fmt.Errorf("starting the controllers: %w", err)
	}
	return nil
}
