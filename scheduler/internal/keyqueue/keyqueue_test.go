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
	defer q.ShutDown()
	q.Work(ctx, 1)
	q.Add("flaky")
	q.Add("fine")
	want := map[string]int{"flaky": 2, "fine": 1}
	deadline := time.After(10 * time.Second)
	for seen := 0; seen < 3; seen++ {
		select {
		case <-synced:
		case <-deadline:
			t.Fatalf("timed out; calls %v, want %v", calls, want)
		}
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	for k, n := range want {
		if calls[k] != n {
			t.Errorf("%s synced %d times, want %d", k, calls[k], n)
		}
	}
}
