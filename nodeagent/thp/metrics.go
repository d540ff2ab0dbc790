package thp

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

const subsystem = "kybernate_agent"

var (
	windowOpen = metrics.NewGauge(&metrics.GaugeOpts{
		Subsystem:      subsystem,
		Name:           "thp_window_open",
		Help:           "1 while the agent holds the node's transparent huge page settings at the window's values (--thp-window) for a checkpoint.",
		StabilityLevel: metrics.ALPHA,
	})
	windowHolders = metrics.NewGauge(&metrics.GaugeOpts{
		Subsystem:      subsystem,
		Name:           "thp_window_holders",
		Help:           "Checkpoints running inside the THP window now (they share one window).",
		StabilityLevel: metrics.ALPHA,
	})
	windowOpens = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      subsystem,
		Name:           "thp_window_opens_total",
		Help:           "THP windows opened, by whether the settings were changed (changed) or the node had the window's values already (unchanged).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})
	windowSeconds = metrics.NewCounter(&metrics.CounterOpts{
		Subsystem:      subsystem,
		Name:           "thp_window_seconds_total",
		Help:           "Time the THP window was open, in seconds: how long other processes on the node could get huge pages they would not get otherwise.",
		StabilityLevel: metrics.ALPHA,
	})
	windowErrors = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      subsystem,
		Name:           "thp_window_errors_total",
		Help:           "Failures to open (the checkpoint ran without huge pages) or close (the state file keeps the previous settings) the THP window.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"op"})
	recoveries = metrics.NewCounter(&metrics.CounterOpts{
		Subsystem:      subsystem,
		Name:           "thp_window_recoveries_total",
		Help:           "THP settings put back at start from the state file of an agent that ended with the window open.",
		StabilityLevel: metrics.ALPHA,
	})
)

var registerOnce sync.Once

// RegisterMetrics registers the window's metrics in the legacy registry; later calls do
// nothing.
func RegisterMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(windowOpen, windowHolders, windowOpens, windowSeconds, windowErrors, recoveries)
		windowOpens.WithLabelValues("changed")
		windowOpens.WithLabelValues("unchanged")
		windowErrors.WithLabelValues("open")
		windowErrors.WithLabelValues("close")
	})
}
