package migrate

import (
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
)

// EventNotMovedFromCordonedNode: a suspended pod on a cordoned node found no node to move to.
const EventNotMovedFromCordonedNode = "NotMovedFromCordonedNode"

// cordoned reports whether node is cordoned (spec.unschedulable, as kubectl cordon and drain
// set it): it is being drained or emptied, so its suspended pods move now if they can, whatever
// their suspension's reason, without waiting for the cost rule.
func (c *Controller) cordoned(node string) bool {
	n, err := c.nodes.Get(node)
	return err == nil && n.Spec.Unschedulable
}

// nodeHandler scans when a node is cordoned.
func (c *Controller) nodeHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(old, obj interface{}) {
			o, ok1 := old.(*v1.Node)
			n, ok2 := obj.(*v1.Node)
			if ok1 && ok2 && n.Spec.Unschedulable && !o.Spec.Unschedulable {
				c.queue.Add(scanKey)
			}
		},
	}
}
