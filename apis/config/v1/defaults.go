package v1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Defaults of the plugin args.
const (
	DefaultScoringStrategy             ScoringStrategyType = "MostAllocated"
	DefaultMinCandidateNodesPercentage int32               = 10
	DefaultMinCandidateNodesAbsolute   int32               = 100
	DefaultSuspendTimeout                                  = 5 * time.Minute
	DefaultMinRuntime                                      = time.Duration(0)
	DefaultTimeSliceQuantum                                = 60 * time.Second
	DefaultTimeSliceMinQuantumFactor   int32               = 10
	DefaultMigrationMinWait                                = 30 * time.Second
	DefaultMigrationBytesPerSecond     int64               = 1 << 30
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
	if obj.SuspendTimeout == nil {
		obj.SuspendTimeout = &metav1.Duration{Duration: DefaultSuspendTimeout}
	}
	if obj.DefaultMinRuntime == nil {
		obj.DefaultMinRuntime = &metav1.Duration{Duration: DefaultMinRuntime}
	}
	if obj.TimeSliceQuantum == nil {
		obj.TimeSliceQuantum = &metav1.Duration{Duration: DefaultTimeSliceQuantum}
	}
	if obj.TimeSliceMinQuantumFactor == nil {
		obj.TimeSliceMinQuantumFactor = ptr.To(DefaultTimeSliceMinQuantumFactor)
	}
	if obj.DisableMigration == nil {
		obj.DisableMigration = ptr.To(false)
	}
	if obj.MigrationMinWait == nil {
		obj.MigrationMinWait = &metav1.Duration{Duration: DefaultMigrationMinWait}
	}
	if obj.MigrationBytesPerSecond == nil {
		obj.MigrationBytesPerSecond = ptr.To(DefaultMigrationBytesPerSecond)
	}
}
