// Package validation checks the args of Kybernate's scheduler plugins. Plugins call it again in
// their New, so a bad configuration stops the scheduler at start with a field path that names
// the setting.
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
	if d := args.SuspendTimeout.Duration; d <= 0 {
		errs = append(errs, field.Invalid(path.Child("suspendTimeout"), d.String(), "must be positive"))
	}
	if d := args.DefaultMinRuntime.Duration; d < 0 {
		errs = append(errs, field.Invalid(path.Child("defaultMinRuntime"), d.String(), "must not be negative"))
	}
	if d := args.TimeSliceQuantum.Duration; d < time.Second {
		errs = append(errs, field.Invalid(path.Child("timeSliceQuantum"), d.String(), "must be at least 1s"))
	}
	if f := args.TimeSliceMinQuantumFactor; f < 1 || f > 1000 {
		errs = append(errs, field.Invalid(path.Child("timeSliceMinQuantumFactor"), f, "not in valid range [1, 1000]"))
	}
	if d := args.MigrationMinWait.Duration; d < 0 {
		errs = append(errs, field.Invalid(path.Child("migrationMinWait"), d.String(), "must not be negative"))
	}
	if r := args.MigrationBytesPerSecond; r < 1<<20 {
		errs = append(errs, field.Invalid(path.Child("migrationBytesPerSecond"), r, "must be at least 1048576 (1 MiB/s)"))
	}
	return errs.ToAggregate()
}
