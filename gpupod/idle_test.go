package gpupod

import (
	"errors"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

func podWith(annotations map[string]string) *v1.Pod {
	return &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "llm", Namespace: "ml", UID: "u1", Annotations: annotations}}
}

func TestIdleAfter(t *testing.T) {
	for _, tc := range []struct {
		value   *string
		want    time.Duration
		set     bool
		wantErr bool
	}{
		{value: nil},
		{value: ptr("5m"), want: 5 * time.Minute, set: true},
		{value: ptr(" 30s "), want: 30 * time.Second, set: true},
		{value: ptr("1s"), want: time.Second, set: true},
		{value: ptr("500ms"), set: true, wantErr: true},
		{value: ptr("-5m"), set: true, wantErr: true},
		{value: ptr("five minutes"), set: true, wantErr: true},
		{value: ptr(""), set: true, wantErr: true},
	} {
		ann := map[string]string{}
		if tc.value != nil {
			ann[kv1.AnnotationIdleAfter] = *tc.value
		}
		d, set, err := IdleAfter(podWith(ann))
		if d != tc.want || set != tc.set || (err != nil) != tc.wantErr {
			t.Errorf("IdleAfter(%v) = %v, %v, %v; want %v, %v, error %v", tc.value, d, set, err, tc.want, tc.set, tc.wantErr)
		}
		var fe *FieldError
		if err != nil && (!errors.As(err, &fe) || fe.Field != kv1.AnnotationIdleAfter) {
			t.Errorf("IdleAfter(%v): error %v does not name the annotation", tc.value, err)
		}
	}
}

func ptr(s string) *string { return &s }

func TestSleep(t *testing.T) {
	for _, tc := range []struct {
		value *string
		want  kv1.SleepDepth
		err   bool
	}{
		{value: nil, want: kv1.SleepHostMemory},
		{value: ptr("HostMemory"), want: kv1.SleepHostMemory},
		{value: ptr("hostmemory"), want: kv1.SleepHostMemory},
		{value: ptr("Disk"), want: kv1.SleepDisk},
		{value: ptr(" disk "), want: kv1.SleepDisk},
		{value: ptr(""), err: true},
		{value: ptr("ObjectStore"), err: true}, // images reach it from the disk tier, not as a depth
		{value: ptr("Disk,HostMemory"), err: true},
		{value: ptr("Diskette"), err: true},
	} {
		ann := map[string]string{}
		name := "<none>"
		if tc.value != nil {
			ann[kv1.AnnotationSleep], name = *tc.value, *tc.value
		}
		got, err := Sleep(podWith(ann))
		if tc.err {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != kv1.AnnotationSleep || !strings.Contains(err.Error(), "HostMemory") || !strings.Contains(err.Error(), "Disk") {
				t.Errorf("Sleep(%q) = %q, %v; want a FieldError of %s naming both depths", name, got, err, kv1.AnnotationSleep)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Sleep(%q) = %q, %v; want %q", name, got, err, tc.want)
		}
	}
}

func TestWakePending(t *testing.T) {
	at := time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)
	pod := podWith(map[string]string{kv1.AnnotationWakeRequested: FormatWakeRequested(at)})
	if got, set, err := WakeRequested(pod); !got.Equal(at) || !set || err != nil {
		t.Errorf("WakeRequested = %v, %v, %v; want %v", got, set, err, at)
	}
	if !WakePending(pod, at.Add(-time.Second)) {
		t.Error("a wake asked for after the suspension is not pending")
	}
	if WakePending(pod, at.Add(time.Second)) {
		t.Error("a wake asked for before the suspension is pending")
	}
	if WakePending(podWith(map[string]string{kv1.AnnotationWakeRequested: "yesterday"}), at) {
		t.Error("an undecodable wake is pending")
	}
	if WakePending(podWith(nil), at) {
		t.Error("a pod without the annotation has a wake pending")
	}
}

func TestIdleCheckpoint(t *testing.T) {
	ck := IdleCheckpoint(podWith(nil), 3)
	if ck.Name != "llm-idle-3" || ck.Spec.Action != kv1.ActionSuspend || ck.Spec.Reason != kv1.ReasonIdle ||
		ck.Spec.PodUID != "u1" || len(ck.OwnerReferences) != 1 || ck.Spec.Preemptor != nil {
		t.Errorf("IdleCheckpoint = %+v", ck)
	}
}

func TestServiceBackend(t *testing.T) {
	svc := func(ann map[string]string) *v1.Service {
		return &v1.Service{ObjectMeta: metav1.ObjectMeta{Annotations: ann}}
	}
	if _, ok, err := ServiceBackend(svc(nil)); ok || err != nil {
		t.Errorf("a Service without the annotations is a backend: %v, %v", ok, err)
	}
	b, ok, err := ServiceBackend(svc(map[string]string{kv1.AnnotationBackendSelector: "app=llm", kv1.AnnotationBackendPort: "8000"}))
	if !ok || err != nil || b.Port != 8000 || b.Selector.String() != "app=llm" {
		t.Errorf("ServiceBackend = %+v, %v, %v", b, ok, err)
	}
	for _, ann := range []map[string]string{
		{kv1.AnnotationBackendPort: "8000"},
		{kv1.AnnotationBackendSelector: "app=llm"},
		{kv1.AnnotationBackendSelector: "app=llm", kv1.AnnotationBackendPort: "0"},
		{kv1.AnnotationBackendSelector: "app=llm", kv1.AnnotationBackendPort: "http"},
		{kv1.AnnotationBackendSelector: "", kv1.AnnotationBackendPort: "80"},
		{kv1.AnnotationBackendSelector: "app in (", kv1.AnnotationBackendPort: "80"},
	} {
		_, ok, err := ServiceBackend(svc(ann))
		var fe *FieldError
		if !ok || !errors.As(err, &fe) {
			t.Errorf("ServiceBackend(%v) = %v, %v; want a FieldError", ann, ok, err)
		}
	}
}

// The annotations of scale to zero are written by users (idle-after, sleep, the Service's
// backend) and by any client allowed to patch pods (wake-requested): the decoders never panic,
// and errors name the annotation. Seeds in testdata/fuzz/FuzzIdleAnnotations.
func FuzzIdleAnnotations(f *testing.F) {
	f.Add("5m", "HostMemory", "2026-12-07T02:00:00Z", "app=llm", "8000")
	f.Add("90s", "Disk", "2026-12-07T02:00:00Z", "app=llm", "8000")
	f.Fuzz(func(t *testing.T, idleAfter, sleep, wake, selector, port string) {
		pod := podWith(map[string]string{kv1.AnnotationIdleAfter: idleAfter, kv1.AnnotationSleep: sleep, kv1.AnnotationWakeRequested: wake})
		check := func(field string, err error) {
			var fe *FieldError
			if err != nil && (!errors.As(err, &fe) || fe.Field != field) {
				t.Fatalf("error %v does not name %s", err, field)
			}
		}
		d, set, err := IdleAfter(pod)
		check(kv1.AnnotationIdleAfter, err)
		if !set || (err == nil && d < MinIdleAfter) {
			t.Fatalf("IdleAfter(%q) = %v, %v, %v", idleAfter, d, set, err)
		}
		s, err := Sleep(pod)
		check(kv1.AnnotationSleep, err)
		if err == nil && !strings.EqualFold(strings.TrimSpace(sleep), string(s)) {
			t.Fatalf("Sleep(%q) = %q", sleep, s)
		}
		if err == nil && s != kv1.SleepHostMemory && s != kv1.SleepDisk {
			t.Fatalf("Sleep(%q) = %q, no depth", sleep, s)
		}
		at, _, err := WakeRequested(pod)
		check(kv1.AnnotationWakeRequested, err)
		if err == nil {
			again, _, err := WakeRequested(podWith(map[string]string{kv1.AnnotationWakeRequested: FormatWakeRequested(at)}))
			if err != nil || !again.Equal(at) {
				t.Fatalf("wake %q does not encode back: %v, %v", wake, again, err)
			}
		}
		svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{kv1.AnnotationBackendSelector: selector, kv1.AnnotationBackendPort: port}}}
		b, ok, err := ServiceBackend(svc)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || (fe.Field != kv1.AnnotationBackendSelector && fe.Field != kv1.AnnotationBackendPort) {
				t.Fatalf("ServiceBackend: error %v is not a FieldError of its annotations", err)
			}
		} else if !ok || b.Port < 1 || b.Port > 65535 || b.Selector.Empty() {
			t.Fatalf("ServiceBackend(%q, %q) = %+v, %v", selector, port, b, ok)
		}
	})
}
