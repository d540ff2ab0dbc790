package activator

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Limits bound what a Backend holds while its pod sleeps.
type Limits struct {
	// MaxHeld is the most requests held at once; one more is answered 503 at once.
	MaxHeld int
	// HoldTimeout is how long one request is held at most before it is answered 503.
	HoldTimeout time.Duration
}

// HoldError is why a held request was not forwarded: the queue was full, the request waited
// too long, or the wake failed. The proxy answers it with 503 and Retry-After.
type HoldError struct {
	// Cause is a metric label value: queue_full, timeout, wake_failed or canceled.
	Cause string
	// Message is the body of the answer.
	Message string
}

func (e *HoldError) Error() string { return e.Message }

// Causes of a HoldError.
const (
	CauseQueueFull  = "queue_full"
	CauseTimeout    = "timeout"
	CauseWakeFailed = "wake_failed"
	CauseCanceled   = "canceled"
)

// Backend is one Service behind the activator: where its requests go while a pod of it is
// ready, and the requests it holds, in arrival order, while none is. Its methods are safe for
// concurrent use.
type Backend struct {
	name   string
	limits Limits
	// wake asks for a wake (the controller's reconcile); it must not block.
	wake func()
	now  func() time.Time

	mu sync.Mutex
	// target is host:port of a ready pod; empty while none is ready.
	target string
	held   []*held
	// releasing is true while held requests are being handed to the target one at a time:
	// requests that arrive meanwhile queue behind them, so the order holds.
	releasing    bool
	inflight     int
	lastActivity time.Time
	// wakeStart is when the first request of the current wake was held; zero when no wake is
	// under way.
	wakeStart time.Time
}

// held is a request waiting for its backend.
type held struct {
	done       chan heldOutcome
	dispatched chan struct{}
	once       sync.Once
}

type heldOutcome struct {
	target string
	err    error
}

// NewBackend returns a Backend with no ready pod; wake is called (and must return at once)
// whenever a request is held while no pod is ready.
func NewBackend(name string, limits Limits, wake func(), now func() time.Time) *Backend {
	return &Backend{name: name, limits: limits, wake: wake, now: now, lastActivity: now()}
}

// Lease is a request's permission to use the backend's pod at Target. Release it when the
// response is done.
type Lease struct {
	Target string
	b      *Backend
	h      *held
}

// Dispatched tells the backend that the request is on its way to the pod, so the next held
// request may go: the order in which held requests are forwarded is their arrival order.
func (l *Lease) Dispatched() {
	if l.h != nil {
		l.h.once.Do(func() { close(l.h.dispatched) })
	}
}

// Release ends the request: it counts as activity until now.
func (l *Lease) Release() {
	l.Dispatched()
	l.b.mu.Lock()
	defer l.b.mu.Unlock()
	l.b.inflight--
	l.b.lastActivity = l.b.now()
}

// Acquire returns a lease on a ready pod: at once when one is ready and nothing is held, or
// after holding the request until one is, in arrival order. A full queue, the hold timeout,
// a failed wake or the end of ctx give a *HoldError.
func (b *Backend) Acquire(ctx context.Context) (*Lease, error) {
	b.mu.Lock()
	b.lastActivity = b.now()
	if b.target != "" && len(b.held) == 0 && !b.releasing {
		b.inflight++
		t := b.target
		b.mu.Unlock()
		return &Lease{Target: t, b: b}, nil
	}
	if len(b.held) >= b.limits.MaxHeld {
		b.mu.Unlock()
		return nil, b.reject(CauseQueueFull, fmt.Sprintf("%s is waking up and already holds %d requests, the most it holds; try again later", b.name, b.limits.MaxHeld))
	}
	h := &held{done: make(chan heldOutcome, 1), dispatched: make(chan struct{})}
	b.held = append(b.held, h)
	heldRequests.WithLabelValues(b.name).Inc()
	asleep := b.target == ""
	if asleep && b.wakeStart.IsZero() {
		b.wakeStart = b.now()
	}
	b.mu.Unlock()
	if asleep {
		b.wake()
	}

	timer := time.NewTimer(b.limits.HoldTimeout)
	defer timer.Stop()
	var o heldOutcome
	select {
	case o = <-h.done:
	case <-timer.C:
		if b.remove(h) {
			return nil, b.reject(CauseTimeout, fmt.Sprintf("%s did not become ready within %s while this request was held; try again later", b.name, b.limits.HoldTimeout))
		}
		o = <-h.done // handed out meanwhile
	case <-ctx.Done():
		if b.remove(h) {
			return nil, b.reject(CauseCanceled, fmt.Sprintf("request to %s ended while it was held: %v", b.name, ctx.Err()))
		}
		o = <-h.done
	}
	if o.err != nil {
		return nil, o.err
	}
	return &Lease{Target: o.target, b: b, h: h}, nil
}

func (b *Backend) reject(cause, msg string) *HoldError {
	rejectedRequests.WithLabelValues(cause).Inc()
	return &HoldError{Cause: cause, Message: msg}
}

// remove takes h out of the queue; false when it was handed out already.
func (b *Backend) remove(h *held) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, x := range b.held {
		if x == h {
			b.held = append(b.held[:i], b.held[i+1:]...)
			heldRequests.WithLabelValues(b.name).Dec()
			return true
		}
	}
	return false
}

// Wake is what SetReady reports of a wake it ended.
type Wake struct {
	// Latency is the time from the first held request to the pod being ready.
	Latency time.Duration
	// Held is how many requests were waiting.
	Held int
}

// SetReady points the backend at a ready pod and forwards the held requests to it, in order.
// A pod that becomes ready starts its idle clock. When this ends a wake, ok is true and w
// describes it.
func (b *Backend) SetReady(target string) (w Wake, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.target != target {
		b.lastActivity = b.now()
	}
	b.target = target
	if !b.wakeStart.IsZero() {
		w, ok = Wake{Latency: b.now().Sub(b.wakeStart), Held: len(b.held)}, true
		wakeDuration.Observe(w.Latency.Seconds())
		wakes.WithLabelValues(WakeSucceeded).Inc()
		b.wakeStart = time.Time{}
		b.lastActivity = b.now()
	}
	if len(b.held) > 0 && !b.releasing {
		b.releasing = true
		go b.release()
	}
	return w, ok
}

// release hands the held requests to the target one at a time, each once the previous one
// is on its way.
func (b *Backend) release() {
	for {
		b.mu.Lock()
		if len(b.held) == 0 || b.target == "" {
			b.releasing = false
			b.mu.Unlock()
			return
		}
		h := b.held[0]
		b.held = b.held[1:]
		heldRequests.WithLabelValues(b.name).Dec()
		b.inflight++
		t := b.target
		b.mu.Unlock()
		h.done <- heldOutcome{target: t}
		<-h.dispatched
	}
}

// SetAsleep marks the backend as having no ready pod: new requests are held.
func (b *Backend) SetAsleep() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.target = ""
}

// Fail answers every held request 503 with reason and ends the current wake with outcome
// (WakeFailed or WakeTimedOut). It returns how many requests it answered.
func (b *Backend) Fail(outcome, reason string) int {
	b.mu.Lock()
	hs := b.held
	b.held = nil
	if !b.wakeStart.IsZero() {
		wakes.WithLabelValues(outcome).Inc()
		b.wakeStart = time.Time{}
	}
	b.mu.Unlock()
	for _, h := range hs {
		heldRequests.WithLabelValues(b.name).Dec()
		h.done <- heldOutcome{err: b.reject(CauseWakeFailed, fmt.Sprintf("%s could not be woken: %s", b.name, reason))}
	}
	return len(hs)
}

// State is a snapshot of a Backend for the controller.
type State struct {
	Ready bool
	// Held is the number of held requests.
	Held int
	// Busy is true while a request is forwarded or held.
	Busy bool
	// IdleFor is the time since the last request began or ended.
	IdleFor time.Duration
	// WakingSince is when the current wake began; zero when none is under way.
	WakingSince time.Time
}

// State returns the backend's state now.
func (b *Backend) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return State{
		Ready: b.target != "", Held: len(b.held), Busy: b.inflight > 0 || len(b.held) > 0,
		IdleFor: b.now().Sub(b.lastActivity), WakingSince: b.wakeStart,
	}
}
