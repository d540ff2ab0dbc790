package v1

import (
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	schedschemev1 "k8s.io/kube-scheduler/config/v1"
	schedconfig "k8s.io/kubernetes/pkg/scheduler/apis/config"
)

// SchemeGroupVersion is kube-scheduler's configuration group, version v1.
var SchemeGroupVersion = schema.GroupVersion{Group: schedconfig.GroupName, Version: "v1"}

var (
	// Registering into kube-scheduler's own v1 builder puts our args into its scheme.
	localSchemeBuilder = &schedschemev1.SchemeBuilder
	// AddToScheme registers the v1 args types, their defaults and conversions.
	AddToScheme = localSchemeBuilder.AddToScheme
)

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(SchemeGroupVersion,
		&GPUShareArgs{},
		&CheckpointPreemptionArgs{},
	)
	return nil
}

// ControllersSchemeGroupVersion is config.kybernate.io/v1, the group of ControllerConfiguration.
var ControllersSchemeGroupVersion = schema.GroupVersion{Group: "config.kybernate.io", Version: "v1"}

// controllersSchemeBuilder registers the v1 ControllerConfiguration, its defaults and conversions.
var controllersSchemeBuilder = runtime.NewSchemeBuilder(func(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(ControllersSchemeGroupVersion, &ControllerConfiguration{})
	return nil
}, RegisterDefaults, RegisterConversions)

// AddControllersToScheme registers ControllerConfiguration (see controllersSchemeBuilder).
var AddControllersToScheme = controllersSchemeBuilder.AddToScheme

func init() {
	localSchemeBuilder.Register(addKnownTypes)
	localSchemeBuilder.Register(RegisterDefaults)
	localSchemeBuilder.Register(RegisterConversions)
}
