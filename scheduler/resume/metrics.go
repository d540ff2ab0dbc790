package resume

import (
	"sync"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"

	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
)

// resumesDeferred counts resumes the agents deferred for lack of free GPU memory.
var resumesDeferred = metrics.NewCounter(&metrics.CounterOpts{
	Name:           "kybernate_scheduler_resumes_deferred_total",
	Help:           "Resumes a node agent deferred because a target GPU had less free memory than the pod's footprint plus a margin.",
	StabilityLevel: metrics.ALPHA,
})

var registerOnce sync.Once

// RegisterMetrics registers the controller's counters with the scheduler's registry.
func RegisterMetrics() {
	registerOnce.Do(func() { legacyregistry.MustRegister(resumesDeferred) })
}

var (
	suspendedPodsDesc = metrics.NewDesc("kybernate_scheduler_suspended_pods",
		"Pods whose GPU memory is parked in host memory, per node, as the nodes' agents report them.",
		[]string{"node"}, nil, metrics.ALPHA, "")
	parkedBytesDesc = metrics.NewDesc("kybernate_scheduler_parked_bytes",
		"GPU memory of suspended pods held in host memory, in bytes, per node, as the nodes' agents report it.",
		[]string{"node"}, nil, metrics.ALPHA, "")
)

// collector reports the suspended pods and parked bytes of every node from the GPUNodes, read
// at scrape time so the figures are never stale.
type collector struct {
	metrics.BaseStableCollector
	gpuNodes listers.GPUNodeLister
}

// NewCollector returns the collector of suspended pods and parked bytes.
func NewCollector(gpuNodes listers.GPUNodeLister) metrics.StableCollector {
	return &collector{gpuNodes: gpuNodes}
}

func (c *collector) DescribeWithStability(ch chan<- *metrics.Desc) {
	ch <- suspendedPodsDesc
	ch <- parkedBytesDesc
}

func (c *collector) CollectWithStability(ch chan<- metrics.Metric) {
	gns, err := c.gpuNodes.List(labels.Everything())
	if err != nil {
		return
	}
	for _, gn := range gns {
		ch <- metrics.NewLazyConstMetric(suspendedPodsDesc, metrics.GaugeValue, float64(len(gn.Status.SuspendedPods)), gn.Name)
		ch <- metrics.NewLazyConstMetric(parkedBytesDesc, metrics.GaugeValue, float64(gn.Status.HostMemory.ParkedBytes), gn.Name)
	}
}
