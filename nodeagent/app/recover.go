package app

import (
	"context"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// recoverNode takes over the node's suspended pods after the agent started: the driver still
// holds their processes parked, but NVML does not list them. It runs once the caches are
// synced, before the controller acts on GPUCheckpoints.
func (a *agent) recoverNode(ctx context.Context, node string, pids func(context.Context) (map[types.UID][]int, error)) {
	logger := klog.FromContext(ctx)
	byPod, err := pids(ctx)
	if err != nil {
		logger.Error(err, "Cannot list the node's processes: suspended pods from before the start are not taken over", "node", node)
		return
	}
	pods, err := a.podFactory.Core().V1().Pods().Lister().List(labels.Everything())
	if err != nil {
		logger.Error(err, "Listing pods from the cache failed")
		return
	}
	ckpts, err := a.ckptFactory.Kybernate().V1alpha1().GPUCheckpoints().Lister().List(labels.Everything())
	if err != nil {
		logger.Error(err, "Listing GPUCheckpoints from the cache failed")
		return
	}
	a.controllerOperator().Recover(ctx, node, byPod, pods, ckpts)
}
