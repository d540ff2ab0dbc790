package gpupod

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// MinIdleAfter is the shortest kybernate.io/idle-after: a pod suspended sooner would spend its
// time moving memory rather than serving.
const MinIdleAfter = time.Second

// IdleAfter decodes kybernate.io/idle-after: how long a pod may go without a request before it
// is put to sleep. set is false without the annotation (the pod never sleeps); a value that is
// no Go duration or is shorter than MinIdleAfter is an error.
func IdleAfter(pod *v1.Pod) (d time.Duration, set bool, err error) {
	s, ok := pod.Annotations[kv1.AnnotationIdleAfter]
	if !ok {
		return 0, false, nil
	}
	d, err = time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, true, &FieldError{Field: kv1.AnnotationIdleAfter, Value: s, Reason: `is not a duration such as "5m"`, Err: err}
	}
	if d < MinIdleAfter {
		return 0, true, fieldError(kv1.AnnotationIdleAfter, s, "must be at least %s", MinIdleAfter)
	}
	return d, true, nil
}

// sleepDepths are the values of kybernate.io/sleep, shallowest first.
var sleepDepths = []kv1.SleepDepth{kv1.SleepHostMemory, kv1.SleepDisk}

// Sleep decodes kybernate.io/sleep: how deep an idle pod sleeps, SleepHostMemory without the
// annotation. Values are matched without regard to case or surrounding space.
func Sleep(pod *v1.Pod) (kv1.SleepDepth, error) {
	s, ok := pod.Annotations[kv1.AnnotationSleep]
	if !ok {
		return kv1.SleepHostMemory, nil
	}
	for _, d := range sleepDepths {
		if strings.EqualFold(strings.TrimSpace(s), string(d)) {
			return d, nil
		}
	}
	return "", fieldError(kv1.AnnotationSleep, s, "must be %s (GPU memory parked in host memory) or %s (then spilled to the node's disk tier)",
		kv1.SleepHostMemory, kv1.SleepDisk)
}

// FormatWakeRequested encodes the kybernate.io/wake-requested value of a wake asked for at t.
func FormatWakeRequested(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// WakeRequested decodes kybernate.io/wake-requested: when a request last asked for the pod to
// wake. set is false without the annotation.
func WakeRequested(pod *v1.Pod) (t time.Time, set bool, err error) {
	s, ok := pod.Annotations[kv1.AnnotationWakeRequested]
	if !ok {
		return time.Time{}, false, nil
	}
	t, err = time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, true, &FieldError{Field: kv1.AnnotationWakeRequested, Value: s, Reason: "is not an RFC 3339 time", Err: err}
	}
	return t, true, nil
}

// WakePending reports whether a pod put to sleep at suspendedAt has been asked to wake since.
func WakePending(pod *v1.Pod, suspendedAt time.Time) bool {
	t, set, err := WakeRequested(pod)
	return set && err == nil && !t.Before(suspendedAt)
}

// IdleCheckpointName names the GPUCheckpoint that puts pod to sleep for the sleep-th time since
// its start: one name per sleep, so a retried request creates no second suspension.
func IdleCheckpointName(pod *v1.Pod, sleep int) string {
	return CheckpointName(pod, fmt.Sprintf("-idle-%d", sleep))
}

// IdleCheckpoint is the GPUCheckpoint that suspends an idle pod (action Suspend, reason Idle),
// owned by the pod like every suspension.
func IdleCheckpoint(pod *v1.Pod, sleep int) *kv1.GPUCheckpoint {
	return &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{
			Name:            IdleCheckpointName(pod, sleep),
			Namespace:       pod.Namespace,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}},
		},
		Spec: kv1.GPUCheckpointSpec{
			PodName: pod.Name,
			PodUID:  string(pod.UID),
			Action:  kv1.ActionSuspend,
			Reason:  kv1.ReasonIdle,
		},
	}
}

// Backend is where the activator sends the requests of a Service: the pods its selector picks
// in the Service's namespace, on Port.
type Backend struct {
	Selector labels.Selector
	Port     int
}

// ServiceBackend decodes kybernate.io/backend-selector and kybernate.io/backend-port of a
// Service. ok is false when the Service has neither (it is not the activator's).
func ServiceBackend(svc *v1.Service) (b Backend, ok bool, err error) {
	sel, hasSel := svc.Annotations[kv1.AnnotationBackendSelector]
	port, hasPort := svc.Annotations[kv1.AnnotationBackendPort]
	if !hasSel && !hasPort {
		return Backend{}, false, nil
	}
	if !hasSel {
		return Backend{}, true, fieldError(kv1.AnnotationBackendSelector, "", "is missing while %s is set", kv1.AnnotationBackendPort)
	}
	b.Selector, err = labels.Parse(sel)
	if err != nil {
		return Backend{}, true, &FieldError{Field: kv1.AnnotationBackendSelector, Value: sel, Reason: `is not a label selector such as "app=llm"`, Err: err}
	}
	if b.Selector.Empty() {
		return Backend{}, true, fieldError(kv1.AnnotationBackendSelector, sel, "selects every pod of the namespace")
	}
	b.Port, err = strconv.Atoi(strings.TrimSpace(port))
	if err != nil || b.Port < 1 || b.Port > 65535 {
		return Backend{}, true, &FieldError{Field: kv1.AnnotationBackendPort, Value: port, Reason: "is not a port number 1..65535", Err: err}
	}
	return b, true, nil
}
