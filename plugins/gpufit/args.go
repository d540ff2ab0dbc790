package gpufit

import (
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	configv1 "k8s.io/kube-scheduler/config/v1"
	"k8s.io/kubernetes/pkg/scheduler/apis/config"
	schedscheme "k8s.io/kubernetes/pkg/scheduler/apis/config/scheme"
	"k8s.io/kubernetes/pkg/scheduler/apis/config/validation"
	"sigs.k8s.io/yaml"
)

// Args decodes the plugin's args: NodeResourcesFit's own (kubescheduler.config.k8s.io/v1
// NodeResourcesFitArgs, apiVersion and kind optional), defaulted and validated as kube-scheduler
// does them for NodeResourcesFit. No args give NodeResourcesFit's defaults.
func Args(obj runtime.Object) (*config.NodeResourcesFitArgs, error) {
	var raw []byte
	switch o := obj.(type) {
	case nil:
	case *runtime.Unknown:
		raw = o.Raw
	default:
		return nil, fmt.Errorf("%s: want NodeResourcesFitArgs, got %T", Name, obj)
	}
	external := &configv1.NodeResourcesFitArgs{}
	if len(raw) > 0 {
		if err := yaml.UnmarshalStrict(raw, external); err != nil {
			return nil, fmt.Errorf("%s args: %w", Name, err)
		}
	}
	if external.Kind != "" && external.Kind != "NodeResourcesFitArgs" {
		return nil, fmt.Errorf("%s args: kind %q, want NodeResourcesFitArgs", Name, external.Kind)
	}
	schedscheme.Scheme.Default(external)
	args := &config.NodeResourcesFitArgs{}
	if err := schedscheme.Scheme.Convert(external, args, nil); err != nil {
		return nil, fmt.Errorf("%s args: %w", Name, err)
	}
	if err := validation.ValidateNodeResourcesFitArgs(field.NewPath("pluginConfig", "args"), args); err != nil {
		return nil, fmt.Errorf("%s args: %w", Name, err)
	}
	return args, nil
}
