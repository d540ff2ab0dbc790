package extender

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

var (
	requests = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      "kybernate_extender",
		Name:           "requests_total",
		Help:           "Extender requests by verb and HTTP status code.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"verb", "code"})
	requestDuration = metrics.NewHistogramVec(&metrics.HistogramOpts{
		Subsystem:      "kybernate_extender",
		Name:           "request_duration_seconds",
		Help:           "Time to answer an extender request, by verb.",
		Buckets:        metrics.ExponentialBuckets(0.0005, 2, 14),
		StabilityLevel: metrics.ALPHA,
	}, []string{"verb"})
	suspensionsRequested = metrics.NewCounter(&metrics.CounterOpts{
		Subsystem:      "kybernate_extender",
		Name:           "suspensions_requested_total",
		Help:           "GPUCheckpoints (Suspend, reason Preemption) the extender created for preemptors.",
		StabilityLevel: metrics.ALPHA,
	})
	registerOnce sync.Once
)

// RegisterMetrics registers the extender's metrics with the process's legacy registry, once.
func RegisterMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(requests, requestDuration, suspensionsRequested)
	})
}
