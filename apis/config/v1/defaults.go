package v1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Defaults of the plugin args and the controllers' configuration.
const (
	DefaultScoringStrategy             ScoringStrategyType = "MostAllocated"
	DefaultMinCandidateNodesPercentage int32               = 10
	DefaultMinCandidateNodesAbsolute   int32               = 100
	DefaultMinRuntime                                      = time.Duration(0)
	DefaultTimeSliceQuantum                                = 60 * time.Second
	DefaultTimeSliceMinQuantumFactor   int32               = 10
	DefaultMigrationMinWait                                = 30 * time.Second
	DefaultMigrationBytesPerSecond     int64               = 1 << 30
	DefaultSpreadingDelay                                  = 30 * time.Second
	DefaultLeaseName                                       = "kybernate-resume-controller"
	DefaultLeaseNamespace                                  = "kybernate-system"
	DefaultLeaseDuration                                   = 15 * time.Second
	DefaultRenewDeadline                                   = 10 * time.Second
	DefaultRetryPeriod                                     = 2 * time.Second
)

// SetDefaults_GPUShareArgs sets the defaults of GPUShareArgs.
func SetDefaults_GPUShareArgs(obj *GPUShareArgs) {
	if obj.ScoringStrategy == nil {
		obj.ScoringStrategy = ptr.To(DefaultScoringStrategy)
	}
}

// SetDefaults_CheckpointPreemptionArgs sets the defaults of CheckpointPreemptionArgs.
func SetDefaults_CheckpointPreemptionArgs(obj *CheckpointPreemptionArgs) {
	if obj.MinCandidateNodesPercentage == nil {
		obj.MinCandidateNodesPercentage = ptr.To(DefaultMinCandidateNodesPercentage)
	}
	if obj.MinCandidateNodesAbsolute == nil {
		obj.MinCandidateNodesAbsolute = ptr.To(DefaultMinCandidateNodesAbsolute)
	}
	if obj.DefaultMinRuntime == nil {
		obj.DefaultMinRuntime = &metav1.Duration{Duration: DefaultMinRuntime}
	}
}

// SetDefaults_ControllerConfiguration sets the defaults of ControllerConfiguration.
func SetDefaults_ControllerConfiguration(obj *ControllerConfiguration) {
	le := &obj.LeaderElection
	if le.LeaderElect == nil {
		le.LeaderElect = ptr.To(true)
	}
	if le.ResourceName == "" {
		le.ResourceName = DefaultLeaseName
	}
	if le.ResourceNamespace == "" {
		le.ResourceNamespace = DefaultLeaseNamespace
	}
	durationDefault(&le.LeaseDuration, DefaultLeaseDuration)
	durationDefault(&le.RenewDeadline, DefaultRenewDeadline)
	durationDefault(&le.RetryPeriod, DefaultRetryPeriod)
	for _, b := range []**bool{&obj.DisableResume, &obj.DisableTimeSlicing, &obj.DisableMigration, &obj.DisableSpreading} {
		if *b == nil {
			*b = ptr.To(false)
		}
	}
	durationDefault(&obj.DefaultMinRuntime, DefaultMinRuntime)
	durationDefault(&obj.TimeSliceQuantum, DefaultTimeSliceQuantum)
	if obj.TimeSliceMinQuantumFactor == nil {
		obj.TimeSliceMinQuantumFactor = ptr.To(DefaultTimeSliceMinQuantumFactor)
	}
	durationDefault(&obj.MigrationMinWait, DefaultMigrationMinWait)
	durationDefault(&obj.SpreadingDelay, DefaultSpreadingDelay)
	if obj.MigrationBytesPerSecond == nil {
		obj.MigrationBytesPerSecond = ptr.To(DefaultMigrationBytesPerSecond)
	}
}

func durationDefault(d **metav1.Duration, def time.Duration) {
	if *d == nil {
		*d = &metav1.Duration{Duration: def}
	}
}
