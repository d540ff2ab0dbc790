package activator

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

// Outcomes of a wake, the values of the outcome label of kybernate_activator_wakes_total.
const (
	WakeSucceeded = "success"
	WakeFailed    = "failed"
	WakeTimedOut  = "timeout"
)

var (
	heldRequests = metrics.NewGaugeVec(&metrics.GaugeOpts{
		Name:           "kybernate_activator_held_requests",
		Help:           "Requests held by the activator while the pods of their Service sleep or wake, by Service (namespace/name).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"service"})
	wakeDuration = metrics.NewHistogram(&metrics.HistogramOpts{
		Name:           "kybernate_activator_wake_duration_seconds",
		Help:           "Time from the first request held for a sleeping Service to a pod of it being ready, of successful wakes.",
		Buckets:        metrics.ExponentialBuckets(0.05, 2, 14), // 50 ms .. ~6.8 min
		StabilityLevel: metrics.ALPHA,
	})
	wakes = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "kybernate_activator_wakes_total",
		Help:           "Wakes of sleeping Services by outcome: success, failed (the resume failed or no pod can wake), timeout.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"outcome"})
	rejectedRequests = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "kybernate_activator_rejected_requests_total",
		Help:           "Requests answered 503 instead of forwarded, by cause: queue_full, timeout, wake_failed, canceled.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"cause"})
	sleeps = metrics.NewCounter(&metrics.CounterOpts{
		Name:           "kybernate_activator_sleeps_total",
		Help:           "Idle pods the activator asked to suspend (GPUCheckpoint reason Idle).",
		StabilityLevel: metrics.ALPHA,
	})
)

var registerOnce sync.Once

// RegisterMetrics registers the activator's metrics in component-base's legacy registry, once
// per process, with the series of known label values at zero.
func RegisterMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(heldRequests, wakeDuration, wakes, rejectedRequests, sleeps)
		for _, o := range []string{WakeSucceeded, WakeFailed, WakeTimedOut} {
			wakes.WithLabelValues(o)
		}
		for _, c := range []string{CauseQueueFull, CauseTimeout, CauseWakeFailed, CauseCanceled} {
			rejectedRequests.WithLabelValues(c)
		}
	})
}
