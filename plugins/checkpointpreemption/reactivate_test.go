package checkpointpreemption

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// A held-back preemptor is activated once, after its preemption ended, however often
// PreEnqueue held it back meanwhile; one whose preemption never ends is never activated.
func TestReactivatorActivatesWhenPreemptionEnds(t *testing.T) {
	var ended atomic.Bool
	activated := make(chan string, 10)
	r := &reactivator{
		watching: map[types.UID]bool{},
		running:  func(uid types.UID) bool { return uid == "stuck" || !ended.Load() },
		activate: func(_ klog.Logger, pods map[string]*v1.Pod) {
			for name := range pods {
				activated <- name
			}
		},
		interval: time.Millisecond,
		timeout:  200 * time.Millisecond,
	}
	pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", UID: "p"}}
	stuck := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "stuck", UID: "stuck"}}
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() { r.watch(klog.Background(), pod) })
	}
	r.watch(klog.Background(), stuck)
	wg.Wait()
	select {
	case name := <-activated:
		t.Fatalf("%s activated while its preemption runs", name)
	default:
	}
	ended.Store(true)
	if name := <-activated; name != "p" {
		t.Fatalf("activated %s, want p", name)
	}
	// The stuck pod's watch gives up after its timeout without activating it; then nothing is
	// watched any more and no second activation of p came.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		r.mu.Lock()
		n := len(r.watching)
		r.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d watches left", n)
		}
	}
	if len(activated) != 0 {
		t.Fatalf("activated again: %s", <-activated)
	}
}
