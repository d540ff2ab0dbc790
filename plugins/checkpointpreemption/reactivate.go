package checkpointpreemption

import (
	"context"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
)

// gateTimeout bounds how long a held-back preemptor is watched for the end of its preemption.
const gateTimeout = time.Minute

// reactivator moves a preemptor that PreEnqueue held back to the active queue once its
// asynchronous preemption has finished. The scheduler re-runs PreEnqueue only on the events a
// plugin registers (a GPUCheckpoint appearing), but a preemption without victims (a time-slice
// turn, a waiting preemptor) creates none, and kube-scheduler's evaluator activates the pod
// only when an API call failed: without this, an event that arrived during the preemption
// (the pod on the GPU deleted) left the preemptor gated until some unrelated GPUCheckpoint
// appeared.
type reactivator struct {
	mu       sync.Mutex
	watching map[types.UID]bool
	// running reports whether the pod's preemption still runs; activate moves it to activeQ.
	running  func(types.UID) bool
	activate func(klog.Logger, map[string]*v1.Pod)
	interval time.Duration
	// timeout bounds the watch of one pod (gateTimeout).
	timeout time.Duration
}

// watch starts one goroutine per held-back pod that activates it once running says its
// preemption ended, or gives up after its timeout.
func (r *reactivator) watch(logger klog.Logger, pod *v1.Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watching[pod.UID] {
		return
	}
	r.watching[pod.UID] = true
	go func() {
		defer func() {
			r.mu.Lock()
			delete(r.watching, pod.UID)
			r.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
		defer cancel()
		err := wait.PollUntilContextCancel(ctx, r.interval, false, func(context.Context) (bool, error) {
			return !r.running(pod.UID), nil
		})
		if err != nil {
			logger.V(2).Info("Preemption still running after the gate's timeout; the pod waits for an event", "pod", klog.KObj(pod))
			return
		}
		r.activate(logger, map[string]*v1.Pod{pod.Name: pod})
	}()
}
