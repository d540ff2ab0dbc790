// Package cli is the kubectl plugin kubectl-kybernate: what Kybernate does with a cluster's
// GPUs, seen and steered from kubectl. It reads GPUNode and GPUCheckpoint objects and the
// kybernate.io annotations of pods through the project's own codecs, and asks for suspensions
// and resumes the way the scheduler does: through GPUCheckpoint objects the node agents carry
// out.
//
//	kubectl kybernate gpus                   GPUs per node: model, memory, resident and suspended pods
//	kubectl kybernate suspend POD            park a pod's GPU memory in host memory (reason Manual)
//	kubectl kybernate resume POD [--gpu U]   put it back, onto other GPUs of its node if asked
//	kubectl kybernate why POD                why a pod is pending, suspended or waiting for a turn
//	kubectl kybernate top                    GPU time by pod
package cli

import (
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	_ "k8s.io/component-base/logs/json/register" // --logging-format=json
	"k8s.io/klog/v2"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
)

// Options are the flags every command shares: kubectl's connection flags (--kubeconfig,
// --context, -n, ...), the output format and the logging flags.
type Options struct {
	ConfigFlags *genericclioptions.ConfigFlags
	Streams     genericiooptions.IOStreams
	Output      string
	Logs        *logsapi.LoggingConfiguration

	kube kubernetes.Interface
	kyb  versioned.Interface
}

// NewCommand returns the kubectl-kybernate command writing to streams.
func NewCommand(streams genericiooptions.IOStreams) *cobra.Command {
	o := &Options{
		ConfigFlags: genericclioptions.NewConfigFlags(true),
		Streams:     streams,
		Logs:        logsapi.NewLoggingConfiguration(),
	}
	gate := featuregate.NewFeatureGate()
	cmd := &cobra.Command{
		Use:   "kubectl-kybernate",
		Short: "See and steer Kybernate's time-sliced GPUs",
		Long: `kubectl kybernate shows what Kybernate does with the cluster's GPUs and asks it to suspend or
resume pods. GPUs, suspensions and turns come from the GPUNode and GPUCheckpoint objects the
scheduler and the node agents keep.`,
		Annotations: map[string]string{
			// kubectl prints "kubectl kybernate" in usage lines of a plugin named so.
			cobra.CommandDisplayNameAnnotation: "kubectl kybernate",
		},
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := logsapi.ValidateAndApply(o.Logs, gate); err != nil {
				return err
			}
			klog.FromContext(cmd.Context()).V(4).Info("Running", "command", cmd.CommandPath())
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	if err := logsapi.AddFeatureGates(gate); err != nil {
		panic(err) // a programming error: the gates are added once to a new gate
	}
	flags := cmd.PersistentFlags()
	o.ConfigFlags.AddFlags(flags)
	logsapi.AddFlags(o.Logs, flags)
	cmd.AddCommand(newGPUsCommand(o), newSuspendCommand(o), newResumeCommand(o), newWhyCommand(o), newTopCommand(o))
	return cmd
}

// clients connects to the cluster the flags name, once.
func (o *Options) clients() (kubernetes.Interface, versioned.Interface, error) {
	if o.kube != nil {
		return o.kube, o.kyb, nil
	}
	cfg, err := o.ConfigFlags.ToRESTConfig()
	if err != nil {
		return nil, nil, err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("creating kubernetes client: %w", err)
	}
	kyb, err := versioned.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("creating kybernate client: %w", err)
	}
	o.kube, o.kyb = kube, kyb
	return kube, kyb, nil
}

// namespace is the namespace of -n, else the kubeconfig context's, else default.
func (o *Options) namespace() (string, error) {
	ns, _, err := o.ConfigFlags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return "", fmt.Errorf("reading the namespace from the kubeconfig: %w", err)
	}
	return ns, nil
}

// addOutputFlag adds -o with the formats a command supports besides the table.
func (o *Options) addOutputFlag(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&o.Output, "output", "o", "", "Output format: wide, json or yaml (default: a table).")
}
