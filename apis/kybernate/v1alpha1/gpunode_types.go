package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CheckpointCapability is what the node's CUDA driver can do with a running GPU process.
// +enum
// +kubebuilder:validation:Enum=None;LockCheckpoint;Remap
type CheckpointCapability string

const (
	// CheckpointNone: the driver has no checkpoint API (before r570 / CUDA 12.8).
	CheckpointNone CheckpointCapability = "None"
	// CheckpointLockCheckpoint: lock, checkpoint and restore onto the same GPUs (r570+).
	CheckpointLockCheckpoint CheckpointCapability = "LockCheckpoint"
	// CheckpointRemap: restore onto other GPUs of the node too (r580+ / CUDA 13.0).
	CheckpointRemap CheckpointCapability = "Remap"
)

// GPU residency of a pod on a node.
// +enum
// +kubebuilder:validation:Enum=Resident;Suspended;Disk;ObjectStore
type Residency string

const (
	// Resident: the pod's GPU memory is on its GPUs.
	Resident Residency = "Resident"
	// Suspended: the pod's GPU memory is parked in host memory; the process lives on.
	Suspended Residency = "Suspended"
	// OnDisk and InObjectStore: the pod is suspended and the agent's storage tiers moved its
	// memory into a checkpoint image on the node's disk or in object storage; its processes
	// were ended and hold no host memory.
	OnDisk        Residency = "Disk"
	InObjectStore Residency = "ObjectStore"
)

// Conditions of a GPUNode.
const (
	// GPUNodeReady is True while the agent reports fresh status for the node.
	GPUNodeReady = "Ready"
	// GPUNodeSimulated is True when the node's GPUs and checkpoints are simulated by an agent in
	// --simulate mode: nothing on such a node touches a real GPU.
	GPUNodeSimulated = "Simulated"
)

// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=gpun
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Capability",type=string,JSONPath=`.status.checkpointCapability`
// +kubebuilder:printcolumn:name="Driver",type=string,JSONPath=`.status.driverVersion`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Simulated",type=string,JSONPath=`.status.conditions[?(@.type=="Simulated")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// GPUNode is the GPU inventory of one Kubernetes node, named after the node. Its status is
// written by the node's agent and read by the scheduler.
type GPUNode struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec holds the node's settings.
	// +optional
	Spec GPUNodeSpec `json:"spec,omitempty"`

	// status is what the agent observed on the node.
	// +optional
	Status GPUNodeStatus `json:"status,omitempty"`
}

// GPUNodeSpec holds the settings of a node's GPUs.
type GPUNodeSpec struct {
	// slotsPerGPU is how many pods may be bound to each GPU at once (resident or suspended).
	// The node advertises GPUs x slotsPerGPU of kybernate.io/gpu. Set by the agent from its flag.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=64
	SlotsPerGPU *int32 `json:"slotsPerGPU,omitempty"`
}

// GPUNodeStatus is the observed state of a node's GPUs.
type GPUNodeStatus struct {
	// gpus are the node's GPUs, in index order.
	// +optional
	// +listType=map
	// +listMapKey=uuid
	// +kubebuilder:validation:MaxItems=64
	GPUs []GPUStatus `json:"gpus,omitempty"`

	// suspendedPods are the pods bound to the node whose GPU memory is parked in host memory.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=1024
	SuspendedPods []PodGPUUsage `json:"suspendedPods,omitempty"`

	// hostMemory is the host memory that can hold parked GPU memory.
	// +optional
	HostMemory HostMemoryStatus `json:"hostMemory,omitempty"`

	// driverVersion is the NVIDIA driver version, e.g. "580.159.04".
	// +optional
	// +kubebuilder:validation:MaxLength=64
	DriverVersion string `json:"driverVersion,omitempty"`

	// cudaDriverVersion is the CUDA driver API version as cuDriverGetVersion reports it,
	// e.g. 13000 for CUDA 13.0.
	// +optional
	// +kubebuilder:validation:Minimum=0
	CUDADriverVersion int32 `json:"cudaDriverVersion,omitempty"`

	// checkpointCapability is what the driver can do with a running GPU process.
	// +optional
	CheckpointCapability CheckpointCapability `json:"checkpointCapability,omitempty"`

	// restoreMarginBytes is the free GPU memory the agent keeps on a GPU beyond a pod's
	// footprint before it restores the pod there (its --restore-margin): the controllers that
	// resume or move pods place them only where that much is left over.
	// +optional
	// +kubebuilder:validation:Minimum=0
	RestoreMarginBytes int64 `json:"restoreMarginBytes,omitempty"`

	// conditions: Ready and Simulated.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`
}

// GPUStatus is one GPU of a node.
type GPUStatus struct {
	// uuid is the GPU's UUID, e.g. GPU-5d0f... Stable across restarts, unlike the index.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	UUID string `json:"uuid"`

	// index is the GPU's NVML index on the node.
	// +required
	// +kubebuilder:validation:Minimum=0
	Index int32 `json:"index"`

	// model is the GPU's product name, e.g. "NVIDIA H100 80GB HBM3".
	// +optional
	// +kubebuilder:validation:MaxLength=128
	Model string `json:"model,omitempty"`

	// memoryTotalBytes is the GPU's memory.
	// +required
	// +kubebuilder:validation:Minimum=0
	MemoryTotalBytes int64 `json:"memoryTotalBytes"`

	// memoryUsedBytes is the GPU memory in use now, by any process.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MemoryUsedBytes int64 `json:"memoryUsedBytes,omitempty"`

	// pods are the pods whose GPU memory is on this GPU.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	Pods []PodGPUUsage `json:"pods,omitempty"`
}

// PodGPUUsage is a pod's use of GPU memory on a node.
type PodGPUUsage struct {
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

	// residency says where the pod's GPU memory is.
	// +required
	Residency Residency `json:"residency"`

	// bytes of GPU memory the pod holds (on this GPU when resident; in all when suspended).
	// +optional
	// +kubebuilder:validation:Minimum=0
	Bytes int64 `json:"bytes,omitempty"`

	// gpus are the UUIDs the pod's memory is on, or was on before it was suspended.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	GPUs []string `json:"gpus,omitempty"`
}

// HostMemoryStatus is host memory that holds parked GPU memory.
type HostMemoryStatus struct {
	// parkableBytes is how much more GPU memory the node may park now: available host memory
	// minus the agent's reserve.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ParkableBytes int64 `json:"parkableBytes,omitempty"`

	// parkedBytes is the GPU memory of suspended pods held in host memory now.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ParkedBytes int64 `json:"parkedBytes,omitempty"`
}

// +kubebuilder:object:root=true

// GPUNodeList is a list of GPUNode.
type GPUNodeList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []GPUNode `json:"items"`
}
