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

// A coalescing queue syncs a key added many times in a burst once; a key added after the burst
// comes after it, so its sync marks the end without waiting for nothing to happen.
func TestCoalescingSyncsABurstOnce(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]int{}
	done := make(chan struct{})
	q := New("test", "sync failed", func(_ context.Context, key string) error {
		mu.Lock()
		defer mu.Unlock()
		calls[key]++
		if key == "end" {
			close(done)
		}
		return nil
	}).Coalescing(50 * time.Millisecond)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	q.Work(ctx, 1)
	for range 5 {
		q.Add("node")
	}
	q.Add("end")
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the last key was never synced")
	}
	mu.Lock()
	defer mu.Unlock()
	if calls["node"] != 1 {
		t.Errorf("a key added 5 times in a burst was synced %d times, want 1", calls["node"])
	}
}

// Add on a coalescing queue holds the key: nothing is ready to sync right after it.
func TestCoalescingHoldsAddedKeys(t *testing.T) {
	q := New("test", "sync failed", func(context.Context, string) error { return nil })
	defer q.ShutDown()
	q.Add("plain")
	held := New("test-held", "sync failed", func(context.Context, string) error { return nil }).Coalescing(time.Hour)
	defer held.ShutDown()
	held.Add("node")
	if q.Len() != 1 || held.Len() != 0 {
		t.Errorf("ready keys: %d without coalescing (want 1), %d with (want 0)", q.Len(), held.Len())
	}
}
