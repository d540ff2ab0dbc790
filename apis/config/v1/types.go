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

// CheckpointPreemptionArgs are the arguments of the CheckpointPreemption plugin and of the
// scheduler's resume and time-slice controllers.
type CheckpointPreemptionArgs struct {
	metav1.TypeMeta `json:",inline"`

	// minCandidateNodesPercentage is the least share of nodes, in percent, a preemption looks
	// at. Default 10.
	MinCandidateNodesPercentage *int32 `json:"minCandidateNodesPercentage,omitempty"`
	// minCandidateNodesAbsolute is the least number of nodes a preemption looks at. Default 100.
	MinCandidateNodesAbsolute *int32 `json:"minCandidateNodesAbsolute,omitempty"`

	// suspendTimeout is how long a suspension may take before the preemption is given up.
	// Default 5m.
	SuspendTimeout *metav1.Duration `json:"suspendTimeout,omitempty"`

	// defaultMinRuntime is how long a pod runs after a resume before it may be suspended
	// again, for pods without the kybernate.io/min-runtime annotation. Default 0s.
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

	// migrationMinWait is how long a pod stays suspended before it may be moved to another
	// node. Default 30s.
	MigrationMinWait *metav1.Duration `json:"migrationMinWait,omitempty"`

	// migrationBytesPerSecond is the rate a migration moves a pod's memory at, end to end
	// (checkpoint, image written and read, restore). A pod moves only when moving its bytes at
	// this rate takes less than the time it has waited already. Default 1073741824 (1 GiB/s).
	MigrationBytesPerSecond *int64 `json:"migrationBytesPerSecond,omitempty"`
}
