package sim

import (
	"time"

	v1 "k8s.io/api/core/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// AnnotationProgress is the pod annotation where the simulated agent publishes a pod's
// progress counter: the whole seconds the pod has been GPU-resident (all its simulated
// processes RUNNING on their GPUs), as a decimal integer. It only advances while the pod is
// resident, stays put while it is suspended, and continues from its value after an agent
// restart. The "sim." prefix marks it as a product of --simulate; real pods never get it.
const AnnotationProgress = kv1.AnnotationSimulatedProgress

// ProgressOf reads a pod's progress annotation; 0 when it has none or it is malformed.
func ProgressOf(pod *v1.Pod) time.Duration { return gpupod.SimulatedProgress(pod) }

// FormatProgress renders progress as the annotation holds it.
func FormatProgress(d time.Duration) string { return gpupod.FormatSimulatedProgress(d) }
