package v1alpha1

// Names of the extended resource, labels, annotations and conditions Kybernate reads and writes
// on core objects. Inputs are set by users; outputs are written only by Kybernate.
const (
	// ResourceGPU is the extended resource a pod requests to get GPUs: physical GPUs times the
	// node agent's slots per GPU (bounded oversubscription).
	ResourceGPU = "kybernate.io/gpu"

	// AnnotationGPUMemory (input) is the VRAM a pod needs on each of its GPUs, a quantity such
	// as "40Gi". Without it the pod takes whole GPUs.
	AnnotationGPUMemory = "kybernate.io/gpu-memory"
	// AnnotationGPUModel (input) restricts a pod to GPUs of one model, as the node agent
	// reports it (GPUStatus.Model).
	AnnotationGPUModel = "kybernate.io/gpu-model"
	// AnnotationPreemption (input) is Suspend (default) or Never.
	AnnotationPreemption = "kybernate.io/preemption"
	// AnnotationMinRuntime (input) is how long a pod runs after a resume before it may be
	// suspended again, a Go duration such as "10m".
	AnnotationMinRuntime = "kybernate.io/min-runtime"
	// AnnotationRestoreFrom (input to the shim) is the checkpoint image a container is
	// restored from instead of started.
	AnnotationRestoreFrom = "kybernate.io/restore-from"

	// AnnotationMigrateTo (output) is the node a pod that is being checkpointed for a
	// migration is to move to.
	AnnotationMigrateTo = "kybernate.io/migrate-to"
	// AnnotationMigratedFrom (output) is on a pod created to replace a migrating one:
	// "<namespace>/<name>/<uid>" of the pod it replaces.
	AnnotationMigratedFrom = "kybernate.io/migrated-from"

	// AnnotationGPUs (output) lists the UUIDs of the GPUs assigned to a pod, comma separated.
	AnnotationGPUs = "kybernate.io/gpus"
	// AnnotationState (output) is the pod's PodGPUState.
	AnnotationState = "kybernate.io/state"

	// AnnotationGPUTime (output) is the GPU time a time-sliced pod has received up to its last
	// turn change, a Go duration such as "3m0s".
	AnnotationGPUTime = "kybernate.io/gpu-time"

	// LabelTimeSlice (output) marks the pods that take turns on an oversubscribed node:
	// TimeSliceRunning while their turn lasts, TimeSliceWaiting while they wait for one.
	LabelTimeSlice = "kybernate.io/time-slice"

	// ConditionGPUResident is the pod condition that is True while the pod's GPU memory is on
	// its GPUs and False while it is parked in host memory or in a checkpoint image.
	ConditionGPUResident = "kybernate.io/GPUResident"

	// LabelGPUModel and LabelGPUCount are node labels for the GPUs a node has.
	LabelGPUModel = "kybernate.io/gpu-model"
	LabelGPUCount = "kybernate.io/gpu-count"
)

// PreemptionPolicy is the value of AnnotationPreemption.
type PreemptionPolicy string

const (
	// PreemptionSuspend lets higher-priority pods suspend the pod (the default).
	PreemptionSuspend PreemptionPolicy = "Suspend"
	// PreemptionNever keeps the pod on its GPU until it ends.
	PreemptionNever PreemptionPolicy = "Never"
)

// Values of LabelTimeSlice.
const (
	TimeSliceRunning = "Running"
	TimeSliceWaiting = "Waiting"
)

// PodGPUState is the value of AnnotationState.
// +enum
type PodGPUState string

const (
	PodRunning       PodGPUState = "Running"
	PodSuspending    PodGPUState = "Suspending"
	PodSuspended     PodGPUState = "Suspended"
	PodResuming      PodGPUState = "Resuming"
	PodCheckpointing PodGPUState = "Checkpointing"
	PodCheckpointed  PodGPUState = "Checkpointed"
	PodRestoring     PodGPUState = "Restoring"
)
