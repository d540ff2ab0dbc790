package keyqueue

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// A key whose sync fails comes back; one that succeeds does not.
func TestRetriesFailedKeys(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]int{}
	synced := make(chan string, 10)
	q := New("test", "sync failed", func(_ context.Context, key string) error {
		mu.Lock()
		calls[key]++
		n := calls[key]
		mu.Unlock()
		synced <- key
		if key == "flaky" && n == 1 {
			return errors.New("first try fails")
		}
		return nil
	})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	q.Work(ctx, 1)
	q.Add("flaky")
	q.Add("fine")
	want := map[string]int{"flaky": 2, "fine": 1}
	deadline := time.After(10 * time.Second)
	for seen := 0; seen < 3; seen++ {
		select {
		case <-synced:
		case <-deadline:
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("timed out; calls %v, want %v", calls, want)
		}
	}
	// Wait for the worker to finish the last key (Done, and Forget or AddRateLimited), then
	// look at the queue's books instead of waiting a while for a wrong retry: a key that comes
	// back is either queued or counted as requeued by the rate limiter.
	q.ShutDownWithDrain()
	mu.Lock()
	defer mu.Unlock()
	for k, n := range want {
		if calls[k] != n {
			t.Errorf("%s synced %d times, want %d", k, calls[k], n)
		}
		if r := q.NumRequeues(k); r != 0 {
			t.Errorf("%s: %d requeues pending after a successful sync, want 0 (forgotten)", k, r)
		}
	}
	if n := q.Len(); n != 0 {
		t.Errorf("%d keys queued after every sync succeeded, want none", n)
	}
}
