package timeslice

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

var (
	rotations = metrics.NewCounter(&metrics.CounterOpts{
		Namespace:      "kybernate",
		Subsystem:      "scheduler",
		Name:           "timeslice_turns_ended_total",
		Help:           "Time-slice turns ended: running pods suspended (reason TimeSlice) so that an equal-priority pod gets its turn.",
		StabilityLevel: metrics.ALPHA,
	})
	registerOnce sync.Once
)

// RegisterMetrics registers the controller's metrics with the scheduler's registry.
func RegisterMetrics() {
	registerOnce.Do(func() { legacyregistry.MustRegister(rotations) })
}
