package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ScoringStrategyType is how GPUShare scores a node's GPUs: MostAllocated or LeastAllocated.
type ScoringStrategyType string

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// GPUShareArgs are the arguments of the GPUShare plugin.
type GPUShareArgs struct {
	metav1.TypeMeta `json:",inline"`

	// scoringStrategy is MostAllocated (bin-pack GPUs by VRAM, the default) or LeastAllocated
	// (spread).
	ScoringStrategy *ScoringStrategyType `json:"scoringStrategy,omitempty"`
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// CheckpointPreemptionArgs are the arguments of the CheckpointPreemption plugin.
type CheckpointPreemptionArgs struct {
	metav1.TypeMeta `json:",inline"`

	// minCandidateNodesPercentage is the least share of nodes, in percent, a preemption looks
	// at. Default 10.
	MinCandidateNodesPercentage *int32 `json:"minCandidateNodesPercentage,omitempty"`
	// minCandidateNodesAbsolute is the least number of nodes a preemption looks at. Default 100.
	MinCandidateNodesAbsolute *int32 `json:"minCandidateNodesAbsolute,omitempty"`

	// defaultMinRuntime is how long a pod runs after a resume before it may be suspended
	// again, for pods without the kybernate.io/min-runtime annotation. Default 0s.
	DefaultMinRuntime *metav1.Duration `json:"defaultMinRuntime,omitempty"`
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// ControllerConfiguration configures the controllers kybernate-scheduler runs beside its
// scheduling profiles (resume, time slicing, migration), whichever plugins the profiles
// enable: apiVersion config.kybernate.io/v1, kind ControllerConfiguration, in the file
// --controllers-config names.
type ControllerConfiguration struct {
	metav1.TypeMeta `json:",inline"`

	// leaderElection elects, among scheduler replicas, the one that runs the controllers.
	LeaderElection ControllerLeaderElection `json:"leaderElection"`

	// disableResume turns the resume controller off: suspended pods are resumed only by a
	// time-slice turn. Default false.
	DisableResume *bool `json:"disableResume,omitempty"`

	// disableTimeSlicing turns the time-slice controller off: equal-priority pods do not take
	// turns on an oversubscribed GPU. Default false.
	DisableTimeSlicing *bool `json:"disableTimeSlicing,omitempty"`

	// defaultMinRuntime is how long a pod's time-slice turn lasts at least, for pods without
	// the kybernate.io/min-runtime annotation; keep it equal to CheckpointPreemption's.
	// Default 0s.
	DefaultMinRuntime *metav1.Duration `json:"defaultMinRuntime,omitempty"`

	// timeSliceQuantum is how long a pod keeps an oversubscribed GPU before an equal-priority
	// pod takes its turn. Default 60s.
	TimeSliceQuantum *metav1.Duration `json:"timeSliceQuantum,omitempty"`

	// timeSliceMinQuantumFactor: the quantum is never shorter than this factor times the
	// measured suspend+resume time of the pods involved. Default 10.
	TimeSliceMinQuantumFactor *int32 `json:"timeSliceMinQuantumFactor,omitempty"`

	// disableMigration keeps suspended pods on their nodes: they are never checkpointed and
	// restored on another node. Default false.
	DisableMigration *bool `json:"disableMigration,omitempty"`

	// disableSpreading keeps pods that share a GPU's compute where they are while another GPU
	// of their node is unused (docs/time-slicing.md#spreading). Spreading needs the resume
	// controller: with disableResume it is off too. Default false.
	DisableSpreading *bool `json:"disableSpreading,omitempty"`

	// spreadingDelay is how long a node's pods must have stayed where they are (resident, no
	// move of theirs ended since) before one of them moves onto an unused GPU. Default 30s.
	SpreadingDelay *metav1.Duration `json:"spreadingDelay,omitempty"`

	// migrationMinWait is how long a pod stays suspended before it may be moved to another
	// node. Default 30s.
	MigrationMinWait *metav1.Duration `json:"migrationMinWait,omitempty"`

	// migrationBytesPerSecond is the rate a migration moves a pod's memory at, end to end
	// (checkpoint, image written and read, restore). A pod moves only when moving its bytes at
	// this rate takes less than the time it has waited already. Default 1073741824 (1 GiB/s).
	MigrationBytesPerSecond *int64 `json:"migrationBytesPerSecond,omitempty"`
}

// ControllerLeaderElection is the Lease the controllers' replicas elect a leader with.
type ControllerLeaderElection struct {
	// leaderElect runs the controllers only in the replica holding the Lease; off, every
	// replica runs them (a single scheduler only). Default true.
	LeaderElect *bool `json:"leaderElect,omitempty"`
	// resourceName is the Lease's name. Default kybernate-resume-controller.
	ResourceName string `json:"resourceName,omitempty"`
	// resourceNamespace is the Lease's namespace. Default kybernate-system.
	ResourceNamespace string `json:"resourceNamespace,omitempty"`
	// leaseDuration, renewDeadline and retryPeriod are client-go's leader election timings.
	// Defaults 15s, 10s, 2s.
	LeaseDuration *metav1.Duration `json:"leaseDuration,omitempty"`
	RenewDeadline *metav1.Duration `json:"renewDeadline,omitempty"`
	RetryPeriod   *metav1.Duration `json:"retryPeriod,omitempty"`
}
