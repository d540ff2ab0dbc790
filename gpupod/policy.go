package gpupod

import (
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// Resident reports whether a pod's VRAM is on its GPUs: everything but Suspended and
// Checkpointed, and Checkpointing of a pod whose memory was parked before (its
// kybernate.io/GPUResident condition is False: a suspended pod checkpointed for a migration).
// A pod still Suspending holds its memory until the agent has moved it.
func Resident(pod *v1.Pod) bool {
	switch StateOf(pod) {
	case kv1.PodSuspended, kv1.PodCheckpointed:
		return false
	case kv1.PodCheckpointing:
		for _, c := range pod.Status.Conditions {
			if c.Type == kv1.ConditionGPUResident {
				return c.Status != v1.ConditionFalse
			}
		}
	}
	return true
}

// NeverSuspended reports whether a pod opts out of suspension (kybernate.io/preemption: Never):
// it keeps its GPUs until it ends, for preemptions and time-slice turns alike.
func NeverSuspended(pod *v1.Pod) bool {
	return strings.EqualFold(pod.Annotations[kv1.AnnotationPreemption], string(kv1.PreemptionNever))
}

// TakesTurns reports whether a pod may give its GPUs up for a time-slice turn of another pod:
// it asks for GPUs and does not opt out with kybernate.io/preemption: Never.
func TakesTurns(pod *v1.Pod) bool {
	if NeverSuspended(pod) {
		return false
	}
	d, err := PodDemand(pod)
	return err == nil && d.Count > 0
}

// MinRuntime decodes kybernate.io/min-runtime: how long the pod runs after a resume before it
// may be suspended again. set is false without the annotation; a value that is no Go duration
// or is negative is an error.
func MinRuntime(pod *v1.Pod) (d time.Duration, set bool, err error) {
	s, ok := pod.Annotations[kv1.AnnotationMinRuntime]
	if !ok {
		return 0, false, nil
	}
	d, err = time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, true, &FieldError{Field: kv1.AnnotationMinRuntime, Value: s, Reason: `is not a duration such as "10m"`, Err: err}
	}
	if d < 0 {
		return 0, true, fieldError(kv1.AnnotationMinRuntime, s, "must not be negative")
	}
	return d, true, nil
}

// FormatGPUTime encodes the kybernate.io/gpu-time value of a pod that received d of GPU time.
func FormatGPUTime(d time.Duration) string { return d.Round(time.Second).String() }

// FormatMigratedFrom encodes the kybernate.io/migrated-from value of a replacement of pod:
// "<namespace>/<name>/<uid>".
func FormatMigratedFrom(pod *v1.Pod) string {
	return pod.Namespace + "/" + pod.Name + "/" + string(pod.UID)
}

// ParseMigratedFrom decodes a kybernate.io/migrated-from value.
func ParseMigratedFrom(s string) (namespace, name string, uid types.UID, err error) {
	parts := strings.Split(s, "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" {
		return "", "", "", fieldError(kv1.AnnotationMigratedFrom, s, "is not <namespace>/<name>/<uid>")
	}
	return parts[0], parts[1], types.UID(parts[2]), nil
}

// IsOutput reports whether an annotation is one Kybernate writes about one pod (its GPUs,
// state, GPU time, migration, simulated progress), as opposed to a user's input such as
// kybernate.io/gpu-memory: outputs are not copied to a pod that replaces it.
func IsOutput(annotation string) bool {
	switch annotation {
	case kv1.AnnotationGPUs, kv1.AnnotationState, kv1.AnnotationGPUTime, kv1.AnnotationMigrateTo,
		kv1.AnnotationRestoreFrom, kv1.AnnotationMigratedFrom, kv1.AnnotationSimulatedProgress:
		return true
	}
	return false
}
