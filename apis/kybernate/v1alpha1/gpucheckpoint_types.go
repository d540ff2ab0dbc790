package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CheckpointAction is what a GPUCheckpoint asks the node agent to do with a pod.
// +enum
// +kubebuilder:validation:Enum=Suspend;Resume;Checkpoint;Restore
type CheckpointAction string

const (
	// ActionSuspend moves the pod's GPU memory into host memory; the process lives on.
	ActionSuspend CheckpointAction = "Suspend"
	// ActionResume puts a suspended pod's GPU memory back, onto spec.targetGPUs if set.
	ActionResume CheckpointAction = "Resume"
	// ActionCheckpoint writes the pod's containers (process and GPU memory) to a checkpoint image.
	ActionCheckpoint CheckpointAction = "Checkpoint"
	// ActionRestore puts a restored container's GPU memory onto spec.targetGPUs.
	ActionRestore CheckpointAction = "Restore"
)

// CheckpointReason is why a GPUCheckpoint was made.
// +enum
// +kubebuilder:validation:Enum=Preemption;TimeSlice;Migration;Manual;Idle;Spread
type CheckpointReason string

const (
	ReasonPreemption CheckpointReason = "Preemption"
	ReasonTimeSlice  CheckpointReason = "TimeSlice"
	ReasonMigration  CheckpointReason = "Migration"
	ReasonManual     CheckpointReason = "Manual"
	// ReasonIdle is a scale-to-zero sleep: the activator suspends a pod that has had no
	// request for its kybernate.io/idle-after, and the pod comes back only when a request
	// asks for it (kybernate.io/wake-requested).
	ReasonIdle CheckpointReason = "Idle"
	// ReasonSpread moves a pod that shares its GPU's compute with other resident pods onto an
	// unused GPU of its node: the spreading controller suspends it and the resume controller
	// brings it back onto the emptiest GPU that holds it.
	ReasonSpread CheckpointReason = "Spread"
)

// CheckpointPhase is where a GPUCheckpoint stands.
// +enum
// +kubebuilder:validation:Enum=Pending;InProgress;Succeeded;Failed
type CheckpointPhase string

const (
	PhasePending    CheckpointPhase = "Pending"
	PhaseInProgress CheckpointPhase = "InProgress"
	PhaseSucceeded  CheckpointPhase = "Succeeded"
	PhaseFailed     CheckpointPhase = "Failed"
)

// Conditions of a GPUCheckpoint.
const (
	// CheckpointComplete is True once the action succeeded, False once it failed for good.
	CheckpointComplete = "Complete"
	// CheckpointRolledBack is True when a failed action was undone and the pod is back in the
	// state it had before.
	CheckpointRolledBack = "RolledBack"
)

// ReasonInsufficientGPUMemory is the reason of a Complete=False condition when the agent's
// restore guard refused a Resume or Restore: a target GPU had less free memory than the pod's
// footprint plus a margin. Nothing was tried; the same action may succeed once memory is free.
const ReasonInsufficientGPUMemory = "InsufficientGPUMemory"

// Deferred reports whether the action was refused by the restore guard (reason
// ReasonInsufficientGPUMemory): a "not yet", not a failure.
func (s *GPUCheckpointStatus) Deferred() bool {
	if s.Phase != PhaseFailed {
		return false
	}
	for _, c := range s.Conditions {
		if c.Type == CheckpointComplete {
			return c.Status == metav1.ConditionFalse && c.Reason == ReasonInsufficientGPUMemory
		}
	}
	return false
}

// GPUFootprint is the most memory the recorded footprint puts on one GPU: what the pod needs on
// each GPU to be restored; 0 when nothing was recorded.
func (s *GPUCheckpointStatus) GPUFootprint() int64 {
	per := map[string]int64{}
	var most int64
	for _, f := range s.Footprint {
		per[f.GPU] += f.Bytes
		most = max(most, per[f.GPU])
	}
	return most
}

// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Namespaced,shortName=gpuckpt
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Pod",type=string,JSONPath=`.spec.podName`
// +kubebuilder:printcolumn:name="Action",type=string,JSONPath=`.spec.action`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.spec.reason`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.nodeName`
// +kubebuilder:printcolumn:name="Bytes",type=integer,JSONPath=`.status.bytesMoved`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// GPUCheckpoint asks the agent on a pod's node to suspend, resume, checkpoint or restore the
// pod's GPU state. It lives in the pod's namespace. The scheduler creates them; users may too
// (reason Manual).
type GPUCheckpoint struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the requested action. It is immutable.
	// +required
	Spec GPUCheckpointSpec `json:"spec"`

	// status is the agent's progress on it.
	// +optional
	Status GPUCheckpointStatus `json:"status,omitempty"`
}

// GPUCheckpointSpec is the requested action on one pod.
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec is immutable"
// +kubebuilder:validation:XValidation:rule="!has(self.targetGPUs) || self.action == 'Resume' || self.action == 'Restore'",message="targetGPUs is only allowed with action Resume or Restore"
// +kubebuilder:validation:XValidation:rule="has(self.preemptor) || self.reason != 'Preemption' || self.action != 'Suspend'",message="preemptor is required for a Suspend with reason Preemption"
// +kubebuilder:validation:XValidation:rule="!has(self.preemptor) || ((self.reason == 'Preemption' || self.reason == 'TimeSlice') && self.action == 'Suspend')",message="preemptor is only allowed for a Suspend with reason Preemption or TimeSlice"
type GPUCheckpointSpec struct {
	// podName is the pod, in the GPUCheckpoint's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	PodName string `json:"podName"`

	// podUID, when set, must match the pod's UID: a pod recreated under the same name is not
	// touched.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	PodUID string `json:"podUID,omitempty"`

	// action is what to do.
	// +required
	Action CheckpointAction `json:"action"`

	// reason is why.
	// +required
	Reason CheckpointReason `json:"reason"`

	// targetGPUs are the UUIDs of the node's GPUs the pod's memory goes to on Resume or
	// Restore, one per GPU of the pod, in the order of the pod's kybernate.io/gpus. Empty means
	// the GPUs the pod had.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=64
	TargetGPUs []string `json:"targetGPUs,omitempty"`

	// preemptor is the pod a suspension makes room for: required for a Suspend with reason
	// Preemption, optional with reason TimeSlice (the pending pod whose turn it is), not
	// allowed otherwise. A Resume undoes a suspension and names none.
	// +optional
	Preemptor *PodReference `json:"preemptor,omitempty"`

	// image is the checkpoint image to restore from (action Restore).
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Image string `json:"image,omitempty"`
}

// PodReference names a pod.
type PodReference struct {
	// namespace of the pod.
	// +required
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace"`
	// name of the pod.
	// +required
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// uid of the pod.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	UID string `json:"uid,omitempty"`
}

// GPUCheckpointStatus is the agent's progress on a GPUCheckpoint.
type GPUCheckpointStatus struct {
	// observedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// phase is where the action stands.
	// +optional
	Phase CheckpointPhase `json:"phase,omitempty"`

	// nodeName is the node whose agent handles the action.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	NodeName string `json:"nodeName,omitempty"`

	// gpus are the UUIDs the pod's memory is on after the action (empty after Suspend and
	// Checkpoint).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	GPUs []string `json:"gpus,omitempty"`

	// bytesMoved is the GPU memory the action moved.
	// +optional
	// +kubebuilder:validation:Minimum=0
	BytesMoved int64 `json:"bytesMoved,omitempty"`

	// steps are the timed steps of the action, in order (e.g. Lock, Checkpoint, Dump).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Steps []StepTiming `json:"steps,omitempty"`

	// startTime is when the agent started the action.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`

	// completionTime is when the action succeeded or failed.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`

	// footprint is, after a Suspend, the GPU memory each of the pod's processes used on each
	// GPU just before its checkpoint, as NVML reported it (its CUDA context included): what a
	// restore needs free there, because the driver destroys a process's GPU state when it
	// refuses a restore for lack of memory. The agent reads it back to take over a suspended
	// pod after it restarts; the scheduler counts it where it is larger than the pod's
	// declared kybernate.io/gpu-memory.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	Footprint []ProcessFootprint `json:"footprint,omitempty"`

	// imageLocation is where a Checkpoint wrote its image.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	ImageLocation string `json:"imageLocation,omitempty"`

	// image describes the image a Checkpoint wrote, once the agent has read it back and
	// verified every file against the checksums of its metadata.json. The scheduler places a
	// restore from it only on nodes with the GPU model and driver it records.
	// +optional
	Image *CheckpointImage `json:"image,omitempty"`

	// storage says, after a Suspend, where the pod's parked GPU memory is now: in host memory,
	// or moved by the agent's tier policy into a checkpoint image on the node's disk or in
	// object storage. After a Resume from a tier it names the tier the memory came back from.
	// +optional
	Storage *CheckpointStorage `json:"storage,omitempty"`

	// message says what happened, in particular why the action failed.
	// +optional
	// +kubebuilder:validation:MaxLength=32768
	Message string `json:"message,omitempty"`

	// conditions: Complete and RolledBack.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`
}

// ProcessFootprint is the GPU memory one process used on one GPU.
type ProcessFootprint struct {
	// pid of the process in the node's (host) PID namespace.
	// +required
	// +kubebuilder:validation:Minimum=1
	PID int32 `json:"pid"`
	// gpu is the GPU's UUID.
	// +required
	// +kubebuilder:validation:MaxLength=64
	GPU string `json:"gpu"`
	// bytes of GPU memory, as NVML reports them for the process.
	// +required
	// +kubebuilder:validation:Minimum=0
	Bytes int64 `json:"bytes"`
}

// StorageTier is where the parked GPU memory of a suspended pod is kept.
// +enum
// +kubebuilder:validation:Enum=HostMemory;Disk;ObjectStore
type StorageTier string

const (
	// TierHostMemory: in the host memory of the pod's processes, which live on.
	TierHostMemory StorageTier = "HostMemory"
	// TierDisk: in an encrypted checkpoint image on the node's disk; the processes are ended.
	TierDisk StorageTier = "Disk"
	// TierObjectStore: in an encrypted checkpoint image in S3-compatible object storage.
	TierObjectStore StorageTier = "ObjectStore"
)

// CheckpointStorage says where a suspended pod's memory is kept and how large it is there.
type CheckpointStorage struct {
	// tier is where the memory is.
	// +required
	Tier StorageTier `json:"tier"`

	// location is the image in the tier: a folder on the node, or s3://bucket/prefix/.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Location string `json:"location,omitempty"`

	// sizeBytes is the plaintext size of the image: the parked memory and the processes' host
	// state (an image of a simulated node holds a record of the simulation, not the memory).
	// +optional
	// +kubebuilder:validation:Minimum=0
	SizeBytes int64 `json:"sizeBytes,omitempty"`

	// storedBytes is what the image takes in the tier, encrypted.
	// +optional
	// +kubebuilder:validation:Minimum=0
	StoredBytes int64 `json:"storedBytes,omitempty"`

	// keyID is the public fingerprint of the namespace key the image is encrypted with.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	KeyID string `json:"keyID,omitempty"`

	// lastMoveTime is when the memory arrived in this tier.
	// +optional
	LastMoveTime *metav1.Time `json:"lastMoveTime,omitempty"`

	// lastError says why the last move out of this tier failed; empty after a move succeeded.
	// The memory stays where tier says.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	LastError string `json:"lastError,omitempty"`
}

// CheckpointImage describes a verified checkpoint image.
type CheckpointImage struct {
	// digest is "sha256:" and the SHA-256 of the image's metadata.json, which lists the
	// SHA-256 of every other file: it names the image's whole content.
	// +required
	// +kubebuilder:validation:MaxLength=71
	Digest string `json:"digest"`

	// sizeBytes is the size of the image's files.
	// +optional
	// +kubebuilder:validation:Minimum=0
	SizeBytes int64 `json:"sizeBytes,omitempty"`

	// files is the number of files metadata.json lists.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Files int32 `json:"files,omitempty"`

	// vramBytes is the GPU memory the image holds.
	// +optional
	// +kubebuilder:validation:Minimum=0
	VRAMBytes int64 `json:"vramBytes,omitempty"`

	// gpuModel is the model of the GPUs the pod's memory was on; empty for an image without
	// GPU memory.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	GPUModel string `json:"gpuModel,omitempty"`

	// driverVersion and cudaDriverVersion are the node's driver when the image was written.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	DriverVersion string `json:"driverVersion,omitempty"`
	// +optional
	CUDADriverVersion int32 `json:"cudaDriverVersion,omitempty"`

	// simulated is true for the image records of the agent's --simulate mode: they hold no
	// process, only what the simulation needs to continue the pod.
	// +optional
	Simulated bool `json:"simulated,omitempty"`
}

// StepTiming is how long one step of an action took.
type StepTiming struct {
	// name of the step, e.g. Lock, Checkpoint, Restore, Unlock, Dump.
	// +required
	// +kubebuilder:validation:MaxLength=64
	Name string `json:"name"`
	// duration of the step.
	// +required
	Duration metav1.Duration `json:"duration"`
	// bytes the step moved, where it moved any.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Bytes int64 `json:"bytes,omitempty"`
}

// +kubebuilder:object:root=true

// GPUCheckpointList is a list of GPUCheckpoint.
type GPUCheckpointList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []GPUCheckpoint `json:"items"`
}
