package activator

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/events"

	kfake "github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned/fake"
	"github.com/kybernate/kybernate/apis/kybernate/client/informers/externalversions"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

var t0 = time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)

// fixture is a controller on fake clientsets whose informer caches the test fills.
type fixture struct {
	c        *Controller
	client   *fake.Clientset
	kyb      *kfake.Clientset
	recorder *events.FakeRecorder
	add      func(obj runtime.Object)
	now      time.Time
}

func newFixture(t *testing.T, objs ...runtime.Object) *fixture {
	t.Helper()
	f := &fixture{client: fake.NewClientset(), kyb: kfake.NewSimpleClientset(), recorder: events.NewFakeRecorder(100), now: t0}
	factory := informers.NewSharedInformerFactory(f.client, 0)
	kfactory := externalversions.NewSharedInformerFactory(f.kyb, 0)
	svcs, pods, cks := factory.Core().V1().Services(), factory.Core().V1().Pods(), kfactory.Kybernate().V1alpha1().GPUCheckpoints()
	c, err := NewController(Config{Limits: Limits{MaxHeld: 10, HoldTimeout: time.Minute}, WakeTimeout: time.Minute, Interval: time.Second,
		ClusterDomain: "cluster.local"}, f.client, f.kyb, svcs, pods, cks, f.recorder)
	if err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return f.now }
	f.c = c
	f.add = func(obj runtime.Object) {
		var err error
		switch o := obj.(type) {
		case *v1.Service:
			err = svcs.Informer().GetIndexer().Update(o)
		case *v1.Pod:
			if _, gerr := f.client.CoreV1().Pods(o.Namespace).Get(context.Background(), o.Name, metav1.GetOptions{}); gerr != nil {
				_ = f.client.Tracker().Add(o) // patches need it
			}
			err = pods.Informer().GetIndexer().Update(o)
		case *kv1.GPUCheckpoint:
			err = cks.Informer().GetIndexer().Add(o)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range objs {
		f.add(o)
	}
	return f
}

func service(ns, name, selector, port string) *v1.Service {
	return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{
		kv1.AnnotationBackendSelector: selector, kv1.AnnotationBackendPort: port,
	}}}
}

// llmPod is pod llm of namespace ml (app=llm) in GPU state s, ready when Running.
func llmPod(s kv1.PodGPUState, idleAfter string) *v1.Pod {
	p := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "llm", UID: "llm-uid", Labels: map[string]string{"app": "llm"},
			Annotations: map[string]string{kv1.AnnotationState: string(s), kv1.AnnotationGPUs: "GPU-0"}},
		Spec: v1.PodSpec{NodeName: "n1"},
		Status: v1.PodStatus{Phase: v1.PodRunning, PodIP: "10.0.0.7",
			Conditions: []v1.PodCondition{{Type: v1.PodReady, Status: v1.ConditionTrue}}},
	}
	if idleAfter != "" {
		p.Annotations[kv1.AnnotationIdleAfter] = idleAfter
	}
	return p
}

func (f *fixture) sync(t *testing.T) {
	t.Helper()
	if err := f.c.sync(t.Context(), "ml/llm"); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) events() string {
	var out []string
	for {
		select {
		case e := <-f.recorder.Events:
			out = append(out, e)
		default:
			return strings.Join(out, "\n")
		}
	}
}

func (f *fixture) created() []*kv1.GPUCheckpoint {
	var out []*kv1.GPUCheckpoint
	for _, a := range f.kyb.Actions() {
		if cr, ok := a.(k8stesting.CreateAction); ok {
			out = append(out, cr.GetObject().(*kv1.GPUCheckpoint))
		}
	}
	return out
}

func TestRoute(t *testing.T) {
	f := newFixture(t, service("ml", "llm", "app=llm", "8000"), service("a", "chat", "app=chat", "80"), service("b", "chat", "app=chat", "80"))
	for _, key := range []string{"ml/llm", "a/chat", "b/chat"} {
		if err := f.c.sync(t.Context(), key); err != nil {
			t.Fatal(err)
		}
	}
	for host, want := range map[string]string{
		"llm.ml": "ml/llm", "llm.ml:8000": "ml/llm", "LLM.ml.svc": "ml/llm", "llm.ml.svc.cluster.local.": "ml/llm", "llm": "ml/llm",
		"chat.a": "a/chat", "chat.b.svc:80": "b/chat", "chat": "", "other.ml": "",
	} {
		b, err := f.c.Route(host)
		switch {
		case want == "" && err == nil:
			t.Errorf("Route(%q) = %s; want an error", host, b.name)
		case want != "" && (err != nil || b.name != want):
			t.Errorf("Route(%q) = %v, %v; want %s", host, b, err, want)
		}
	}
}

// kybernate.io/sleep is read when the pod is put to sleep: Disk is named in the Sleeping Event
// (the node agent spills it); a value that does not decode keeps the pod awake with a Warning
// naming the annotation.
func TestSleepDepth(t *testing.T) {
	for _, tc := range []struct {
		sleep  string
		want   string // in the Events
		sleeps bool
	}{
		{sleep: "", want: "kybernate.io/sleep HostMemory: its GPU memory parked in host memory)", sleeps: true},
		{sleep: "Disk", want: "kybernate.io/sleep Disk: its GPU memory parked in host memory, then spilled to the node agent's disk tier", sleeps: true},
		{sleep: "Tape", want: `Warning InvalidAnnotation The pod never sleeps: annotation kybernate.io/sleep="Tape" must be HostMemory`},
	} {
		t.Run(tc.sleep, func(t *testing.T) {
			pod := llmPod(kv1.PodRunning, "5m")
			if tc.sleep != "" {
				pod.Annotations[kv1.AnnotationSleep] = tc.sleep
			}
			f := newFixture(t, service("ml", "llm", "app=llm", "8000"), pod)
			f.sync(t)
			f.now = t0.Add(5 * time.Minute)
			f.sync(t)
			if got := len(f.created()); (got == 1) != tc.sleeps || got > 1 {
				t.Errorf("created %d suspensions, want sleeping %v", got, tc.sleeps)
			}
			if ev := f.events(); !strings.Contains(ev, tc.want) {
				t.Errorf("events %q, want %q", ev, tc.want)
			}
		})
	}
}

func TestIdlePodSleepsOnce(t *testing.T) {
	f := newFixture(t, service("ml", "llm", "app=llm", "8000"), llmPod(kv1.PodRunning, "5m"))
	f.sync(t)
	if got := f.created(); len(got) != 0 {
		t.Fatalf("a pod that just became known was put to sleep: %v", got)
	}
	b, _ := f.c.Route("llm.ml")
	if st := b.State(); !st.Ready {
		t.Fatalf("the ready pod is not routed to: %+v", st)
	}
	f.now = t0.Add(5 * time.Minute)
	f.sync(t)
	got := f.created()
	if len(got) != 1 || got[0].Name != "llm-idle-1" || got[0].Spec.Reason != kv1.ReasonIdle || got[0].Spec.Action != kv1.ActionSuspend {
		t.Fatalf("after 5m idle created %v, want one Idle suspension llm-idle-1", got)
	}
	if ev := f.events(); !strings.Contains(ev, "Normal Sleeping") {
		t.Errorf("events %q, want Sleeping", ev)
	}
	// The suspension is in flight: requests are held, and no second one is asked for.
	f.add(got[0])
	f.sync(t)
	if n := len(f.created()); n != 1 {
		t.Errorf("%d suspensions requested, want 1", n)
	}
	if st := b.State(); st.Ready {
		t.Errorf("a pod being put to sleep is still routed to: %+v", st)
	}
}

func TestRecentRequestKeepsPodAwake(t *testing.T) {
	f := newFixture(t, service("ml", "llm", "app=llm", "8000"), llmPod(kv1.PodRunning, "5m"))
	f.sync(t)
	b, _ := f.c.Route("llm.ml")
	f.now = t0.Add(4 * time.Minute)
	l, err := b.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	f.now = t0.Add(6 * time.Minute)
	f.sync(t)
	if got := f.created(); len(got) != 0 {
		t.Errorf("a pod with a request 2m ago was put to sleep: %v", got)
	}
}

// idleSuspension is a succeeded Idle suspension of llmPod made at.
func idleSuspension(at time.Time) *kv1.GPUCheckpoint {
	return &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "llm-idle-1", UID: "s1", CreationTimestamp: metav1.NewTime(at)},
		Spec:       kv1.GPUCheckpointSpec{PodName: "llm", PodUID: "llm-uid", Action: kv1.ActionSuspend, Reason: kv1.ReasonIdle},
		Status:     kv1.GPUCheckpointStatus{Phase: kv1.PhaseSucceeded},
	}
}

// hold starts a request on the Service and waits until it is held; its outcome comes on the
// returned channel.
func hold(t *testing.T, f *fixture) chan error {
	t.Helper()
	b, err := f.c.Route("llm.ml")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		l, err := b.Acquire(context.Background())
		if l != nil {
			l.Release()
		}
		done <- err
	}()
	waitFor(t, "a held request", func() bool { return b.State().Held == 1 })
	return done
}

func TestHeldRequestAsksSleepingPodToWake(t *testing.T) {
	f := newFixture(t, service("ml", "llm", "app=llm", "8000"), llmPod(kv1.PodSuspended, "5m"), idleSuspension(t0.Add(-time.Minute)))
	f.sync(t)
	done := hold(t, f)
	f.sync(t)
	pod, err := f.client.CoreV1().Pods("ml").Get(t.Context(), "llm", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if at, set, err := gpupod.WakeRequested(pod); !set || err != nil || !at.Equal(t0) {
		t.Fatalf("wake-requested = %v, %v, %v; want %v", at, set, err, t0)
	}
	if ev := f.events(); !strings.Contains(ev, "Normal WakeRequested") {
		t.Errorf("events %q, want WakeRequested", ev)
	}
	// Resumed: the held request goes to the pod.
	f.add(llmPod(kv1.PodRunning, "5m"))
	f.sync(t)
	if err := <-done; err != nil {
		t.Errorf("held request after the wake: %v", err)
	}
	if ev := f.events(); !strings.Contains(ev, "Normal Woken") {
		t.Errorf("events %q, want Woken", ev)
	}
}

func TestFailedResumeAnswersHeld(t *testing.T) {
	f := newFixture(t, service("ml", "llm", "app=llm", "8000"), llmPod(kv1.PodSuspended, "5m"), idleSuspension(t0.Add(-time.Minute)))
	f.sync(t)
	done := hold(t, f)
	f.add(&kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "llm-resume-s1-1", UID: "r1", CreationTimestamp: metav1.NewTime(t0)},
		Spec:       kv1.GPUCheckpointSpec{PodName: "llm", PodUID: "llm-uid", Action: kv1.ActionResume, Reason: kv1.ReasonIdle},
		Status: kv1.GPUCheckpointStatus{Phase: kv1.PhaseFailed, Conditions: []metav1.Condition{{
			Type: kv1.CheckpointComplete, Status: metav1.ConditionFalse, Reason: "RestoreFailed", Message: "cuCheckpointProcessRestore: CUDA_ERROR_UNKNOWN"}}},
	})
	f.sync(t)
	var he *HoldError
	if err := <-done; !errors.As(err, &he) || he.Cause != CauseWakeFailed || !strings.Contains(he.Message, "CUDA_ERROR_UNKNOWN") {
		t.Errorf("held request after a failed resume: %v", err)
	}
	if ev := f.events(); !strings.Contains(ev, "Warning WakeFailed") || !strings.Contains(ev, "CUDA_ERROR_UNKNOWN") {
		t.Errorf("events %q, want WakeFailed with the reason", ev)
	}
}

func TestBadAnnotationsAreToldOnce(t *testing.T) {
	f := newFixture(t, service("ml", "llm", "app=llm", "http"), llmPod(kv1.PodRunning, "soon"))
	f.sync(t)
	f.sync(t)
	if ev := f.events(); strings.Count(ev, "Warning InvalidBackend") != 1 {
		t.Errorf("events %q, want one InvalidBackend", ev)
	}
	if _, err := f.c.Route("llm.ml"); err == nil {
		t.Error("a Service with a bad port is routed")
	}
	f.add(service("ml", "llm", "app=llm", "8000"))
	f.sync(t)
	f.now = t0.Add(time.Hour)
	f.sync(t)
	if ev := f.events(); strings.Count(ev, "Warning InvalidAnnotation") != 1 || !strings.Contains(ev, kv1.AnnotationIdleAfter) {
		t.Errorf("events %q, want one InvalidAnnotation naming %s", ev, kv1.AnnotationIdleAfter)
	}
	if got := f.created(); len(got) != 0 {
		t.Errorf("a pod with a bad idle-after was put to sleep: %v", got)
	}
}

// A sleep that the node agent fails (here: its node has no usable CUDA driver) leaves the pod
// awake: the requests held meanwhile go to it as soon as the failure is known, and the pod is
// not put to sleep again before another idle-after has passed.
func TestFailedSleepSendsHeldRequestsToThePod(t *testing.T) {
	f := newFixture(t, service("ml", "llm", "app=llm", "8000"), llmPod(kv1.PodRunning, "5m"))
	f.sync(t)
	f.now = t0.Add(5 * time.Minute)
	f.sync(t)
	sleeps := f.created()
	if len(sleeps) != 1 {
		t.Fatalf("created %v, want one Idle suspension", sleeps)
	}
	sleep := sleeps[0].DeepCopy()
	sleep.CreationTimestamp = metav1.NewTime(f.now)
	f.add(sleep)
	done := hold(t, f)
	f.sync(t)
	select {
	case err := <-done:
		t.Fatalf("a request held while the pod is being put to sleep was answered: %v", err)
	default:
	}
	failed := sleep.DeepCopy()
	completed := metav1.NewTime(f.now)
	failed.Status = kv1.GPUCheckpointStatus{Phase: kv1.PhaseFailed, CompletionTime: &completed, Conditions: []metav1.Condition{{
		Type: kv1.CheckpointComplete, Status: metav1.ConditionFalse, Reason: "DriverUnavailable",
		Message: "the agent of node n1 cannot suspend pods with GPUs: its CUDA driver is not usable (cuInit: CUDA_ERROR_NO_DEVICE (100))"}}}
	f.add(failed)
	f.sync(t)
	if err := <-done; err != nil {
		t.Errorf("held request after the sleep failed: %v, want it sent to the pod, which is awake", err)
	}
	f.now = f.now.Add(time.Minute)
	f.sync(t)
	if n := len(f.created()); n != 1 {
		t.Errorf("%d suspensions requested a minute after one failed, want still 1", n)
	}
}
