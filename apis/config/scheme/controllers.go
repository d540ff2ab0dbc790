package scheme

import (
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"

	"github.com/kybernate/kybernate/apis/config"
	configv1 "github.com/kybernate/kybernate/apis/config/v1"
	"github.com/kybernate/kybernate/apis/config/validation"
)

// ControllerScheme holds ControllerConfiguration (config.kybernate.io), apart from
// kube-scheduler's scheme: the controllers are configured whichever profiles there are.
var ControllerScheme = runtime.NewScheme()

var controllerCodecs = serializer.NewCodecFactory(ControllerScheme, serializer.EnableStrict)

func init() {
	utilruntime.Must(config.AddControllersToScheme(ControllerScheme))
	utilruntime.Must(configv1.AddControllersToScheme(ControllerScheme))
	utilruntime.Must(ControllerScheme.SetVersionPriority(configv1.ControllersSchemeGroupVersion))
}

// DecodeControllerConfiguration decodes, defaults and validates a ControllerConfiguration
// (YAML or JSON). Unknown fields are errors.
func DecodeControllerConfiguration(data []byte) (*config.ControllerConfiguration, error) {
	obj, gvk, err := controllerCodecs.UniversalDecoder().Decode(data, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("decoding the controller configuration: %w", err)
	}
	cfg, ok := obj.(*config.ControllerConfiguration)
	if !ok {
		return nil, fmt.Errorf("decoding the controller configuration: got %v, want ControllerConfiguration of %s", gvk, configv1.ControllersSchemeGroupVersion)
	}
	if err := validation.ValidateControllerConfiguration(cfg); err != nil {
		return nil, fmt.Errorf("invalid controller configuration: %w", err)
	}
	return cfg, nil
}

// LoadControllerConfiguration reads the ControllerConfiguration in the file at path; with no
// path, the defaults.
func LoadControllerConfiguration(path string) (*config.ControllerConfiguration, error) {
	if path == "" {
		return DefaultControllerConfiguration(), nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the controller configuration: %w", err)
	}
	cfg, err := DecodeControllerConfiguration(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// DefaultControllerConfiguration is the ControllerConfiguration of an empty file.
func DefaultControllerConfiguration() *config.ControllerConfiguration {
	v1 := &configv1.ControllerConfiguration{}
	ControllerScheme.Default(v1)
	cfg := &config.ControllerConfiguration{}
	utilruntime.Must(ControllerScheme.Convert(v1, cfg, nil))
	return cfg
}
