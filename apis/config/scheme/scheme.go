// Package scheme adds Kybernate's plugin args to kube-scheduler's configuration scheme (import it
// for its side effect in the scheduler binary and in tests that decode a
// KubeSchedulerConfiguration), and loads the controllers' ControllerConfiguration from its own
// scheme (LoadControllerConfiguration).
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	kubeschedulerscheme "k8s.io/kubernetes/pkg/scheduler/apis/config/scheme"

	"github.com/kybernate/kybernate/apis/config"
	configv1 "github.com/kybernate/kybernate/apis/config/v1"
)

// Scheme is kube-scheduler's configuration scheme, with our args in it.
var Scheme = kubeschedulerscheme.Scheme

func init() {
	AddToScheme(Scheme)
}

// AddToScheme adds the internal and v1 args types to a scheme.
func AddToScheme(scheme *runtime.Scheme) {
	utilruntime.Must(config.AddToScheme(scheme))
	utilruntime.Must(configv1.AddToScheme(scheme))
}
