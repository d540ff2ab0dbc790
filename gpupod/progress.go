package gpupod

import (
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// SimulatedProgress reads the progress counter the simulated agent publishes on a pod
// (kv1.AnnotationSimulatedProgress, whole seconds); 0 when it has none or it is malformed.
func SimulatedProgress(pod *v1.Pod) time.Duration {
	n, err := strconv.ParseInt(strings.TrimSpace(pod.Annotations[kv1.AnnotationSimulatedProgress]), 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return time.Duration(n) * time.Second
}

// FormatSimulatedProgress renders progress as the annotation holds it.
func FormatSimulatedProgress(d time.Duration) string {
	return strconv.FormatInt(int64(d/time.Second), 10)
}
