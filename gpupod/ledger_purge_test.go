package gpupod

import (
	"fmt"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	testingclock "k8s.io/utils/clock/testing"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// Reservations that ran out are dropped by the next change after the first of them ended,
// whichever way each ends: by its time to live, SeenGrace after it was seen, or never.
func TestLedgerPurgesOnceTheFirstEnds(t *testing.T) {
	clk := testingclock.NewFakePassiveClock(time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC))
	l := NewLedgerWithClock(clk)
	l.Reserve(OwnerResume, ledgerPod("ttl", "n1", "GPU-0", kv1.PodResuming), 10*time.Second)
	l.Reserve(OwnerScheduler, ledgerPod("never", "n1", "GPU-0", ""), 0)
	seen := ledgerPod("seen", "n1", "GPU-1", "")
	l.Reserve(OwnerScheduler, seen, 20*time.Second)
	l.Observe(seen) // runs out SeenGrace from now, before its time to live
	other := ledgerPod("other", "n2", "GPU-0", "")
	for _, step := range []struct {
		after time.Duration
		want  int
	}{
		{SeenGrace - time.Second, 3},
		{time.Second, 2},     // SeenGrace after "seen" was seen
		{4 * time.Second, 2}, // 9s
		{time.Second, 1},     // 10s: "ttl" ran out
		{time.Hour, 1},       // "never" stays until released
	} {
		clk.SetTime(clk.Now().Add(step.after))
		l.Observe(other) // a pod event of the informer
		if got := l.Len(); got != step.want {
			t.Fatalf("at %v: %d reservations held, want %d", clk.Now().Format(time.TimeOnly), got, step.want)
		}
	}
	if _, _, ok := l.Placed("never"); !ok {
		t.Error("the reservation without a time to live was dropped")
	}
}

// BenchmarkLedgerObserve is the pod informer's events during a burst of placements: n pods
// reserved and seen a moment ago (their grace runs), and an event of another pod per
// iteration (its status, a pod of another scheduler).
func BenchmarkLedgerObserve(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("%d-held", n), func(b *testing.B) {
			clk := testingclock.NewFakePassiveClock(time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC))
			l := NewLedgerWithClock(clk)
			for i := range n {
				p := ledgerPod(fmt.Sprintf("p%d", i), fmt.Sprintf("n%d", i), "GPU-0", "")
				l.Reserve(OwnerScheduler, p, 0)
				l.Observe(p)
			}
			others := make([]*v1.Pod, 100)
			for i := range others {
				others[i] = ledgerPod(fmt.Sprintf("o%d", i), "m", "GPU-0", "")
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				l.Observe(others[i%len(others)])
				i++
			}
		})
	}
}
