// Package app builds the kybernate-scheduler command: kube-scheduler's own command with
// Kybernate's plugins registered and their args in the scheduler's configuration scheme.
package app

import (
	"github.com/spf13/cobra"
	schedapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	"sigs.k8s.io/scheduler-plugins/pkg/coscheduling"

	_ "github.com/kybernate/kybernate/apis/config/scheme" // our plugin args in the scheduler's scheme
	"github.com/kybernate/kybernate/plugins/checkpointpreemption"
	"github.com/kybernate/kybernate/plugins/gpushare"
)

// Plugins are the out-of-tree plugins kybernate-scheduler can enable in a profile.
func Plugins() frameworkruntime.Registry {
	return frameworkruntime.Registry{
		gpushare.Name:             gpushare.New,
		checkpointpreemption.Name: checkpointpreemption.New,
		// Gangs of GPU pods that must start together (needs scheduler-plugins' PodGroup CRD).
		coscheduling.Name: coscheduling.New,
	}
}

// NewCommand returns the kybernate-scheduler command.
func NewCommand() *cobra.Command {
	var opts []schedapp.Option
	for name, factory := range Plugins() {
		opts = append(opts, schedapp.WithPlugin(name, factory))
	}
	return schedapp.NewSchedulerCommand(opts...)
}
