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
