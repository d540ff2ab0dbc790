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

// CheckpointPreemptionArgs are the arguments of the CheckpointPreemption plugin and of the
// controllers in the scheduler binary that resume and time-slice suspended pods.
type CheckpointPreemptionArgs struct {
	metav1.TypeMeta

	// MinCandidateNodesPercentage and MinCandidateNodesAbsolute bound how many nodes a
	// preemption looks at, as in DefaultPreemptionArgs.
	MinCandidateNodesPercentage int32
	MinCandidateNodesAbsolute   int32

	// SuspendTimeout is how long a suspension may take before the preemption is given up.
	SuspendTimeout metav1.Duration

	// DefaultMinRuntime is how long a pod runs after a resume before it may be suspended
	// again, for pods without the kybernate.io/min-runtime annotation.
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

	// MigrationMinWait is how long a pod stays suspended before it may be moved to another
	// node.
	MigrationMinWait metav1.Duration

	// MigrationBytesPerSecond is the rate a migration moves a pod's memory at, end to end
	// (checkpoint, image written and read, restore): a pod moves only when moving its bytes at
	// this rate takes less than the time it has waited already, the estimate of how much
	// longer it would wait.
	MigrationBytesPerSecond int64
}
