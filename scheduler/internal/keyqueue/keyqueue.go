// Package keyqueue is the work loop the controllers of kybernate-scheduler share: a
// rate-limited queue of string keys (node names, namespace/name) whose workers call one sync
// function and retry failed keys with backoff.
package keyqueue

import (
	"context"
	"time"

	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/workqueue"
)

// Queue is a rate-limited queue of keys with the function that syncs one.
type Queue struct {
	workqueue.TypedRateLimitingInterface[string]
	sync    func(ctx context.Context, key string) error
	failure string
	// coalesce, when set, holds every added key that long: the events of one burst (a pod
	// bound, started, reported by the agent) cost one sync instead of one each.
	coalesce time.Duration
}

// New returns a queue named name (for the workqueue metrics); failure is the message logged
// when sync fails for a key.
func New(name, failure string, sync func(ctx context.Context, key string) error) *Queue {
	return &Queue{
		TypedRateLimitingInterface: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: name}),
		sync:    sync,
		failure: failure,
	}
}

// Coalescing makes Add hold each key for d before it is synced, however often it is added
// meanwhile; for a controller whose decisions wait for much longer than d anyway.
func (q *Queue) Coalescing(d time.Duration) *Queue {
	q.coalesce = d
	return q
}

// Add queues the key, after the coalescing time when there is one.
func (q *Queue) Add(key string) {
	if q.coalesce > 0 {
		q.AddAfter(key, q.coalesce)
		return
	}
	q.TypedRateLimitingInterface.Add(key)
}

// Work starts n workers that process keys until ctx ends or the queue shuts down.
func (q *Queue) Work(ctx context.Context, n int) {
	for range n {
		go wait.UntilWithContext(ctx, func(ctx context.Context) {
			for q.processNext(ctx) {
			}
		}, time.Second)
	}
}

func (q *Queue) processNext(ctx context.Context) bool {
	key, quit := q.Get()
	if quit {
		return false
	}
	defer q.Done(key)
	if err := q.sync(ctx, key); err != nil {
		utilruntime.HandleErrorWithContext(ctx, err, q.failure, "key", key)
		q.AddRateLimited(key)
		return true
	}
	q.Forget(key)
	return true
}
