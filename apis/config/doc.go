// Package config holds the internal types of the arguments of Kybernate's scheduler plugins,
// registered in kube-scheduler's configuration API group so that a KubeSchedulerConfiguration
// with our pluginConfig decodes, defaults and validates like the in-tree plugins' args; and of
// ControllerConfiguration, the configuration of kybernate-scheduler's controllers, in
// Kybernate's own group config.kybernate.io (scheme.ControllerScheme).
//
// +k8s:deepcopy-gen=package
package config
