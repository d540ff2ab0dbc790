package migrate

import (
	"sync"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

var (
	migrations = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace:      "kybernate",
		Subsystem:      "scheduler",
		Name:           "migrations_total",
		Help:           "Migrations of suspended pods to other nodes by step reached: Started, CheckpointFailed, RestoreFailed, Abandoned, Succeeded.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})
	duration = metrics.NewHistogram(&metrics.HistogramOpts{
		Namespace:      "kybernate",
		Subsystem:      "scheduler",
		Name:           "migration_duration_seconds",
		Help:           "Time from a migration's checkpoint request to its replacement running, of successful migrations.",
		Buckets:        metrics.ExponentialBuckets(1, 2, 12),
		StabilityLevel: metrics.ALPHA,
	})
	movedBytes = metrics.NewCounter(&metrics.CounterOpts{
		Namespace:      "kybernate",
		Subsystem:      "scheduler",
		Name:           "migration_moved_bytes_total",
		Help:           "GPU memory moved to other nodes by successful migrations.",
		StabilityLevel: metrics.ALPHA,
	})
	registerOnce sync.Once
)

// RegisterMetrics registers the controller's metrics with the scheduler's registry.
func RegisterMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(migrations, duration, movedBytes)
		// Every result's series exists from the start, for dashboards and alerts.
		for _, r := range []string{"Started", "CheckpointFailed", "RestoreFailed", kv1.MigrationAbandoned, kv1.MigrationSucceeded} {
			migrations.WithLabelValues(r)
		}
	})
}

func quantity(n int64) string { return resource.NewQuantity(n, resource.BinarySI).String() }
