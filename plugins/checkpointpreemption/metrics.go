package checkpointpreemption

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

const subsystem = "kybernate_scheduler"

// Values of the outcome label of preemptionAttempts.
const (
	outcomeSuspending  = "suspending"
	outcomeNotHelpful  = "not_helpful"
	outcomeNotEligible = "not_eligible"
	outcomeError       = "error"
	outcomeNotGPUPod   = "not_gpu_pod"
)

var (
	// preemptionAttempts counts PostFilter runs of the plugin by what came of them.
	preemptionAttempts = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      subsystem,
		Name:           "preemption_attempts_total",
		Help:           "Preemptions by suspension, by outcome: suspending (victims asked to suspend), not_helpful (no set of victims makes room), not_eligible (the preemptor waits for its suspensions or may not preempt), error, not_gpu_pod (left to DefaultPreemption).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"outcome"})

	// preemptorBindDuration is the time from a preemptor's creation to its binding.
	preemptorBindDuration = metrics.NewHistogram(&metrics.HistogramOpts{
		Subsystem:      subsystem,
		Name:           "preemptor_bind_duration_seconds",
		Help:           "Time from the creation of a pod that suspended others to its binding.",
		Buckets:        metrics.ExponentialBuckets(0.1, 2, 14), // 100ms .. ~14min
		StabilityLevel: metrics.ALPHA,
	})
)

var registerOnce sync.Once

func registerMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(preemptionAttempts, preemptorBindDuration)
		// Every outcome's series exists from the start, for dashboards and alerts.
		for _, o := range []string{outcomeSuspending, outcomeNotHelpful, outcomeNotEligible, outcomeError, outcomeNotGPUPod} {
			preemptionAttempts.WithLabelValues(o)
		}
	})
}
