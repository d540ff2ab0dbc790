// Package v1alpha1 holds the kybernate.io/v1alpha1 API: GPUNode, the per-node GPU inventory
// written by the node agent, and GPUCheckpoint, the request to move a pod's GPU state that the
// scheduler writes and the agent carries out.
//
// +kubebuilder:object:generate=true
// +groupName=kybernate.io
// +k8s:deepcopy-gen=package
package v1alpha1
