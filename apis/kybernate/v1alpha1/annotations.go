package v1alpha1

// Names of the extended resource, labels, annotations and conditions Kybernate reads and writes
// on core objects and on its own objects: the one place every kybernate.io name is defined.
// Inputs are set by users; outputs are written only by Kybernate. The codecs of their values
// are in package gpupod.
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

	// AnnotationIdleAfter (input) opts a pod into scale to zero: after no request through the
	// activator for this long, a Go duration such as "5m", the pod is suspended (GPUCheckpoint
	// reason Idle) and woken by the next request.
	AnnotationIdleAfter = "kybernate.io/idle-after"
	// AnnotationSleep (input) is how deep an idle pod sleeps: SleepHostMemory (the default,
	// GPU memory parked in host memory, the process alive) or SleepDisk (then spilled to the
	// node agent's disk tier at once).
	AnnotationSleep = "kybernate.io/sleep"
	// AnnotationWakeRequested (output, written by the activator) is the time, RFC 3339, at
	// which a request asked for an idle pod to wake: the resume controller resumes a pod
	// suspended for idleness only when this is later than its suspension.
	AnnotationWakeRequested = "kybernate.io/wake-requested"

	// AnnotationBackendSelector (input, on a Service of type ExternalName that points at the
	// activator) is the label selector of the pods, in the Service's namespace, that serve its
	// requests, such as "app=llm".
	AnnotationBackendSelector = "kybernate.io/backend-selector"
	// AnnotationBackendPort (input, on the same Service) is the pods' port the activator
	// forwards to, a number.
	AnnotationBackendPort = "kybernate.io/backend-port"

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

	// LabelPreemptor (output) is on the suspension GPUCheckpoints a preemption or a time-slice
	// turn requests: the UID of the pod the room is made for.
	LabelPreemptor = "kybernate.io/preemptor-uid"
	// LabelSuspension (output) links a Resume GPUCheckpoint to the suspension it undoes: the
	// suspension's UID.
	LabelSuspension = "kybernate.io/suspension-uid"
	// LabelMigrationOf (output) is on the GPUCheckpoints of a migration: the UID of the pod
	// that moves.
	LabelMigrationOf = "kybernate.io/migration-of"
	// AnnotationMigrationResult (output) is on a migration's Checkpoint once the migration
	// controller is done with it: MigrationSucceeded, MigrationFailed or MigrationAbandoned.
	AnnotationMigrationResult = "kybernate.io/migration-result"
)

// Annotations of the node agent's simulated GPUs (nodeagent/sim), on pods and Nodes of
// simulated nodes only: they describe a simulated process, never a real one.
const (
	// AnnotationSimulatedProgress (output) is the progress counter of a pod's simulated
	// process; it survives suspension and migration like GPU memory would.
	AnnotationSimulatedProgress = "sim.kybernate.io/progress"
	// AnnotationSimulatedFail (input) makes the simulated agent fail the pod's next operation
	// of the named step.
	AnnotationSimulatedFail = "sim.kybernate.io/fail"
	// AnnotationSimulatedForeignMemory (input), on a simulated Node, gives GPUs memory held by
	// simulated processes outside Kybernate: "<gpu index>=<quantity>", comma separated.
	AnnotationSimulatedForeignMemory = "sim.kybernate.io/foreign-gpu-memory"
)

// Values of AnnotationMigrationResult.
const (
	MigrationSucceeded = "Succeeded"
	MigrationFailed    = "Failed"
	MigrationAbandoned = "Abandoned"
)

// PreemptionPolicy is the value of AnnotationPreemption.
type PreemptionPolicy string

const (
	// PreemptionSuspend lets higher-priority pods suspend the pod (the default).
	PreemptionSuspend PreemptionPolicy = "Suspend"
	// PreemptionNever keeps the pod on its GPU until it ends.
	PreemptionNever PreemptionPolicy = "Never"
)

// SleepDepth is the value of AnnotationSleep.
type SleepDepth string

const (
	// SleepHostMemory parks the pod's GPU memory in host memory; the process lives on.
	SleepHostMemory SleepDepth = "HostMemory"
	// SleepDisk suspends the pod as SleepHostMemory does and then spills its parked memory to
	// the node agent's disk tier at once, without waiting for the host-memory high-water
	// mark: the pod's processes end and its host memory is free. A wake restores it from
	// there (and from object storage, once the image has moved on after the disk tier's idle
	// time).
	SleepDisk SleepDepth = "Disk"
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
