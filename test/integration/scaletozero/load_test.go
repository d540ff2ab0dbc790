package scaletozero

import (
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// loadRequests arrive at once while the pod sleeps: as many as the activator holds
// (--max-held-requests, default 1000).
const loadRequests = 1000

// Load on loopback, bounded: 1000 requests arrive while the pod sleeps; every one is answered
// exactly once, by the pod on its GPU. The latency distribution (first byte sent to answer
// read, the wake through the scheduler and the simulated agent included) is printed, not
// asserted.
func TestLoadHeldRequests(t *testing.T) {
	e := setup(t)
	e.deploy(t, "1s", nil)
	e.waitAsleep(t)

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: loadRequests, MaxConnsPerHost: 0}}
	defer client.CloseIdleConnections()
	latencies := make([]time.Duration, loadRequests)
	answers := make([]answer, loadRequests)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range loadRequests {
		wg.Go(func() {
			begin := time.Now()
			answers[i] = e.sendWith(t.Context(), client, i)
			latencies[i] = time.Since(begin)
		})
	}
	wg.Wait()
	total := time.Since(start)

	failed := 0
	for _, a := range answers {
		if a.err != nil || a.status != http.StatusOK || a.body != fmt.Sprintf("answer %d", a.seq) {
			failed++
			if failed <= 5 {
				t.Errorf("request %d: %d %q %v", a.seq, a.status, a.body, a.err)
			}
		}
	}
	count := map[string]int{}
	for _, a := range e.a.model.seen(e.ns) {
		count[a.seq]++
		if a.state != kv1.PodRunning {
			t.Errorf("request %s reached the pod while it was %s", a.seq, a.state)
		}
	}
	for i := range loadRequests {
		if count[fmt.Sprint(i)] != 1 {
			t.Errorf("the pod got request %d %d times", i, count[fmt.Sprint(i)])
		}
	}
	slices.Sort(latencies)
	q := func(p float64) time.Duration {
		return latencies[int(p*float64(len(latencies)-1))].Round(time.Millisecond)
	}
	t.Logf("%d requests held while the pod slept, %d failed, all answered in %s; latency min %s p50 %s p90 %s p99 %s max %s",
		loadRequests, failed, total.Round(time.Millisecond), q(0), q(0.5), q(0.9), q(0.99), q(1))
}
