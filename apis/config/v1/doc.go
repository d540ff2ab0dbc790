// Package v1 is the versioned form of Kybernate's scheduler plugin args, in
// kubescheduler.config.k8s.io/v1 next to the in-tree plugins' args, and of
// ControllerConfiguration, in config.kybernate.io/v1 (ControllersSchemeGroupVersion).
//
// +k8s:deepcopy-gen=package
// +k8s:conversion-gen=github.com/kybernate/kybernate/apis/config
// +k8s:defaulter-gen=TypeMeta
// +k8s:defaulter-gen-input=github.com/kybernate/kybernate/apis/config/v1
// +groupName=kubescheduler.config.k8s.io
package v1
