// Package validation checks the args of Kybernate's scheduler plugins and the configuration of
// its controllers. Plugins and the controller manager call it again when they start, so a bad
// configuration stops the scheduler at start with a field path that names the setting.
package validation

import (
	"time"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/kybernate/kybernate/apis/config"
)

var scoringStrategies = []string{string(config.MostAllocated), string(config.LeastAllocated)}

// ValidateGPUShareArgs checks GPUShareArgs.
func ValidateGPUShareArgs(path *field.Path, args *config.GPUShareArgs) error {
	var errs field.ErrorList
	switch args.ScoringStrategy {
	case config.MostAllocated, config.LeastAllocated:
	default:
		errs = append(errs, field.NotSupported(path.Child("scoringStrategy"), args.ScoringStrategy, scoringStrategies))
	}
	return errs.ToAggregate()
}

// ValidateCheckpointPreemptionArgs checks CheckpointPreemptionArgs.
func ValidateCheckpointPreemptionArgs(path *field.Path, args *config.CheckpointPreemptionArgs) error {
	var errs field.ErrorList
	if p := args.MinCandidateNodesPercentage; p < 0 || p > 100 {
		errs = append(errs, field.Invalid(path.Child("minCandidateNodesPercentage"), p, "not in valid range [0, 100]"))
	}
	if a := args.MinCandidateNodesAbsolute; a < 0 {
		errs = append(errs, field.Invalid(path.Child("minCandidateNodesAbsolute"), a, "must not be negative"))
	}
	if args.MinCandidateNodesPercentage == 0 && args.MinCandidateNodesAbsolute == 0 {
		errs = append(errs, field.Invalid(path.Child("minCandidateNodesAbsolute"), 0,
			"minCandidateNodesPercentage and minCandidateNodesAbsolute must not both be zero"))
	}
	if d := args.DefaultMinRuntime.Duration; d < 0 {
		errs = append(errs, field.Invalid(path.Child("defaultMinRuntime"), d.String(), "must not be negative"))
	}
	return errs.ToAggregate()
}

// ValidateControllerConfiguration checks ControllerConfiguration.
func ValidateControllerConfiguration(cfg *config.ControllerConfiguration) error {
	var errs field.ErrorList
	le, path := cfg.LeaderElection, field.NewPath("leaderElection")
	if le.ResourceName == "" {
		errs = append(errs, field.Required(path.Child("resourceName"), "the Lease needs a name"))
	}
	if le.ResourceNamespace == "" {
		errs = append(errs, field.Required(path.Child("resourceNamespace"), "the Lease needs a namespace"))
	}
	if le.LeaderElect {
		if d := le.RetryPeriod.Duration; d <= 0 {
			errs = append(errs, field.Invalid(path.Child("retryPeriod"), d.String(), "must be positive"))
		}
		if le.RenewDeadline.Duration <= le.RetryPeriod.Duration {
			errs = append(errs, field.Invalid(path.Child("renewDeadline"), le.RenewDeadline.Duration.String(), "must be longer than retryPeriod"))
		}
		if le.LeaseDuration.Duration <= le.RenewDeadline.Duration {
			errs = append(errs, field.Invalid(path.Child("leaseDuration"), le.LeaseDuration.Duration.String(), "must be longer than renewDeadline"))
		}
	}
	if d := cfg.DefaultMinRuntime.Duration; d < 0 {
		errs = append(errs, field.Invalid(field.NewPath("defaultMinRuntime"), d.String(), "must not be negative"))
	}
	if d := cfg.TimeSliceQuantum.Duration; d < time.Second {
		errs = append(errs, field.Invalid(field.NewPath("timeSliceQuantum"), d.String(), "must be at least 1s"))
	}
	if f := cfg.TimeSliceMinQuantumFactor; f < 1 || f > 1000 {
		errs = append(errs, field.Invalid(field.NewPath("timeSliceMinQuantumFactor"), f, "not in valid range [1, 1000]"))
	}
	if d := cfg.MigrationMinWait.Duration; d < 0 {
		errs = append(errs, field.Invalid(field.NewPath("migrationMinWait"), d.String(), "must not be negative"))
	}
	if d := cfg.SpreadingDelay.Duration; d < 0 {
		errs = append(errs, field.Invalid(field.NewPath("spreadingDelay"), d.String(), "must not be negative"))
	}
	if r := cfg.MigrationBytesPerSecond; r < 1<<20 {
		errs = append(errs, field.Invalid(field.NewPath("migrationBytesPerSecond"), r, "must be at least 1048576 (1 MiB/s)"))
	}
	return errs.ToAggregate()
}
