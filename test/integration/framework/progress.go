package framework

import (
	"testing"
	"time"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// ProgressFrozenWhileSuspended checks the simulated progress counter (gpupod.SimulatedProgress)
// in every recorded version of pod: it never goes back, and within each stretch of versions
// whose state is Suspended it stands still. The agent writes the state and publishes the counter in separate
// writes, up to one --simulate-progress-period apart and in whole seconds, so the first versions
// of a stretch may show the counter up to one second before the value it froze at, never more
// and never after it. It returns the value the counter froze at in the last stretch.
func (h *History) ProgressFrozenWhileSuspended(t testing.TB, pod string) time.Duration {
	t.Helper()
	var last, first, frozen time.Duration
	in := false
	for _, v := range h.PodVersions(pod) {
		p := gpupod.SimulatedProgress(v.Pod)
		if p < last {
			t.Errorf("%s: progress of %s went back from %s to %s", v.Time.Format("15:04:05.000"), pod, last, p)
		}
		last = p
		if v.Pod.Annotations[kv1.AnnotationState] != string(kv1.PodSuspended) {
			in = false
			continue
		}
		if !in {
			in, first = true, p
		}
		if p-first > time.Second {
			t.Errorf("%s: progress of %s went from %s to %s while suspended", v.Time.Format("15:04:05.000"), pod, first, p)
		}
		frozen = p
	}
	return frozen
}
