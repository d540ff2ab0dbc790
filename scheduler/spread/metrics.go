package spread

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

var (
	moves = metrics.NewCounter(&metrics.CounterOpts{
		Namespace:      "kybernate",
		Subsystem:      "scheduler",
		Name:           "spread_moves_total",
		Help:           "Pods suspended (reason Spread) to move them off a GPU they shared onto an unused GPU of their node.",
		StabilityLevel: metrics.ALPHA,
	})
	registerOnce sync.Once
)

// RegisterMetrics registers the controller's metrics with the scheduler's registry.
func RegisterMetrics() {
	registerOnce.Do(func() { legacyregistry.MustRegister(moves) })
}
