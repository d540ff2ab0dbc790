// Package daemon builds what Kybernate's daemons (kybernate-agent, kybernate-activator) share:
// the cobra command with its flags, logging flags and feature gates and their validation, a
// context that ends on SIGINT or SIGTERM, the API server clients and the HTTP servers.
package daemon

import (
	"context"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
)

// Options are a daemon's flags; Logs are among them.
type Options interface {
	AddFlags(fs *pflag.FlagSet)
	Validate() error
}

// Command returns a command that validates the logging configuration and the options, then
// calls run until SIGINT or SIGTERM ends its context.
func Command(use, short, long string, logs *logsapi.LoggingConfiguration, o Options, run func(context.Context) error) *cobra.Command {
	featureGate := featuregate.NewFeatureGate()
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := logsapi.ValidateAndApply(logs, featureGate); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return run(ctx)
		},
	}
	if err := logsapi.AddFeatureGates(featureGate); err != nil {
		panic(err) // a programming error: the gates are added once to a new gate
	}
	o.AddFlags(cmd.Flags())
	featureGate.AddFlag(cmd.Flags())
	return cmd
}
