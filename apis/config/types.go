package config

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ScoringStrategyType is how GPUShare scores a node's GPUs.
type ScoringStrategyType string

const (
	// MostAllocated prefers the fullest GPUs that still fit (bin-packing), leaving whole GPUs
	// free for large pods.
	MostAllocated ScoringStrategyType = "MostAllocated"
	// LeastAllocated prefers the emptiest GPUs (spreading).
	LeastAllocated ScoringStrategyType = "LeastAllocated"
)

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// GPUShareArgs are the arguments of the GPUShare plugin.
type GPUShareArgs struct {
	metav1.TypeMeta

	// ScoringStrategy is how nodes are scored by the VRAM of the GPUs a pod would get.
	ScoringStrategy ScoringStrategyType
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// CheckpointPreemptionArgs are the arguments of the CheckpointPreemption plugin.
type CheckpointPreemptionArgs struct {
	metav1.TypeMeta

	// MinCandidateNodesPercentage and MinCandidateNodesAbsolute bound how many nodes a
	// preemption looks at, as in DefaultPreemptionArgs.
	MinCandidateNodesPercentage int32
	MinCandidateNodesAbsolute   int32

	// DefaultMinRuntime is how long a pod runs after a resume before it may be suspended
	// again, for pods without the kybernate.io/min-runtime annotation.
	DefaultMinRuntime metav1.Duration
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// ControllerConfiguration configures the controllers kybernate-scheduler runs beside its
// scheduling profiles (resume, time slicing, migration), whichever plugins the profiles
// enable. Kind ControllerConfiguration of config.kybernate.io, read from the file
// --controllers-config names.
type ControllerConfiguration struct {
	metav1.TypeMeta

	// LeaderElection elects, among scheduler replicas, the one that runs the controllers.
	LeaderElection ControllerLeaderElection

	// DisableResume turns the resume controller off: suspended pods are resumed only by a
	// time-slice turn.
	DisableResume bool

	// DisableTimeSlicing turns the time-slice controller off: equal-priority pods do not
	// take turns on an oversubscribed GPU.
	DisableTimeSlicing bool

	// DefaultMinRuntime is how long a pod's time-slice turn lasts at least, for pods without
	// the kybernate.io/min-runtime annotation. Keep it equal to CheckpointPreemption's.
	DefaultMinRuntime metav1.Duration

	// TimeSliceQuantum is how long a pod keeps an oversubscribed GPU before an equal-priority
	// pod takes its turn.
	TimeSliceQuantum metav1.Duration

	// TimeSliceMinQuantumFactor bounds the quantum from below: it is never shorter than this
	// factor times the measured suspend+resume time of the pods involved.
	TimeSliceMinQuantumFactor int32

	// DisableMigration keeps suspended pods on their nodes: they are never checkpointed and
	// restored on another node.
	DisableMigration bool

	// DisableSpreading keeps pods that share a GPU's compute where they are while another GPU
	// of their node is unused. Spreading needs the resume controller, which brings the moved
	// pod back: with DisableResume it is off too.
	DisableSpreading bool

	// SpreadingDelay is how long a node's pods must have stayed where they are (resident, no
	// move of theirs ended since) before one of them moves onto an unused GPU: a burst of
	// placements is not undone at once, and the next pods may still need whole GPUs.
	SpreadingDelay metav1.Duration

	// MigrationMinWait is how long a pod stays suspended before it may be moved to another
	// node.
	MigrationMinWait metav1.Duration

	// MigrationBytesPerSecond is the rate a migration moves a pod's memory at, end to end
	// (checkpoint, image written and read, restore): a pod moves only when moving its bytes at
	// this rate takes less than the time it has waited already, the estimate of how much
	// longer it would wait.
	MigrationBytesPerSecond int64
}

// ControllerLeaderElection is the Lease the controllers' replicas elect a leader with.
type ControllerLeaderElection struct {
	// LeaderElect runs the controllers only in the replica holding the Lease. Off, every
	// replica runs them: for a single scheduler only.
	LeaderElect bool
	// ResourceName and ResourceNamespace name the Lease.
	ResourceName      string
	ResourceNamespace string
	// LeaseDuration, RenewDeadline and RetryPeriod are client-go's leader election timings.
	LeaseDuration metav1.Duration
	RenewDeadline metav1.Duration
	RetryPeriod   metav1.Duration
}
