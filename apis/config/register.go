package config

import (
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	schedconfig "k8s.io/kubernetes/pkg/scheduler/apis/config"
)

// SchemeGroupVersion is the internal version of kube-scheduler's configuration group.
var SchemeGroupVersion = schema.GroupVersion{Group: schedconfig.GroupName, Version: runtime.APIVersionInternal}

var (
	// Registering into kube-scheduler's own builder puts our args into its scheme.
	localSchemeBuilder = &schedconfig.SchemeBuilder
	// AddToScheme registers the internal args types.
	AddToScheme = localSchemeBuilder.AddToScheme
)

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(SchemeGroupVersion,
		&GPUShareArgs{},
		&CheckpointPreemptionArgs{},
	)
	return nil
}

// ControllersGroupName is the API group of ControllerConfiguration, Kybernate's own: the
// controllers' configuration is not a KubeSchedulerConfiguration.
const ControllersGroupName = "config.kybernate.io"

// ControllersSchemeGroupVersion is the internal version of ControllersGroupName.
var ControllersSchemeGroupVersion = schema.GroupVersion{Group: ControllersGroupName, Version: runtime.APIVersionInternal}

// controllersSchemeBuilder registers the internal ControllerConfiguration.
var controllersSchemeBuilder = runtime.NewSchemeBuilder(func(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(ControllersSchemeGroupVersion, &ControllerConfiguration{})
	return nil
})

// AddControllersToScheme registers ControllerConfiguration (see controllersSchemeBuilder).
var AddControllersToScheme = controllersSchemeBuilder.AddToScheme

func init() {
	localSchemeBuilder.Register(addKnownTypes)
}
