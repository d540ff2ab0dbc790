package extender

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/klog/v2"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"

	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/internal/index"
)

// filter passes the nodes where some GPUs can hold the pod now. When none can, it requests the
// suspensions that make room on one node (preemptBySuspension).
func (e *Extender) filter(ctx context.Context, pod *v1.Pod, nodes []string) *extenderv1.ExtenderFilterResult {
	res := &extenderv1.ExtenderFilterResult{
		NodeNames:                  &[]string{},
		FailedNodes:                extenderv1.FailedNodesMap{},
		FailedAndUnresolvableNodes: extenderv1.FailedNodesMap{},
	}
	d, err := gpupod.PodDemand(pod)
	if err != nil {
		for _, n := range nodes {
			res.FailedAndUnresolvableNodes[n] = err.Error()
		}
		return res
	}
	if d.Count == 0 {
		*res.NodeNames = slices.Clone(nodes)
		return res
	}
	if n, _ := e.suspensionsOf(pod); n > 0 {
		for _, node := range nodes {
			res.FailedNodes[node] = fmt.Sprintf("waiting for %d suspension(s) requested for this pod", n)
		}
		return res
	}
	var notNow []string
	for _, node := range nodes {
		acc, why, err := e.accounting(node, pod)
		switch {
		case err != nil:
			res.FailedNodes[node] = err.Error()
		case acc == nil:
			res.FailedAndUnresolvableNodes[node] = why
		case !acc.Possible(d):
			res.FailedAndUnresolvableNodes[node] = "node has too few GPUs " + describe(d)
		case !acc.FitsNow(d):
			res.FailedNodes[node] = "node has too few free GPUs " + describe(d)
			notNow = append(notNow, node)
		default:
			*res.NodeNames = append(*res.NodeNames, node)
		}
	}
	if len(*res.NodeNames) == 0 && len(notNow) > 0 {
		if msg := e.preemptBySuspension(ctx, pod, d, notNow); msg != "" {
			for _, node := range notNow {
				res.FailedNodes[node] += "; " + msg
			}
		}
	}
	return res
}

// prioritize scores the nodes by how full (MostAllocated) or empty (LeastAllocated) the GPUs the
// pod would get are, as GPUShare's Score, scaled to the extender range 0..10.
func (e *Extender) prioritize(pod *v1.Pod, nodes []string) extenderv1.HostPriorityList {
	out := make(extenderv1.HostPriorityList, 0, len(nodes))
	d, err := gpupod.PodDemand(pod)
	for _, node := range nodes {
		score := int64(0)
		if err == nil && d.Count > 0 {
			if acc, _, aerr := e.accounting(node, pod); aerr == nil && acc != nil {
				if s, ok := acc.ChooseScore(d, e.opts.Strategy); ok {
					score = s * extenderv1.MaxExtenderPriority / 100
				}
			}
		}
		out = append(out, extenderv1.HostPriority{Host: node, Score: score})
	}
	return out
}

// preempt keeps the candidate nodes of kube-scheduler's own preemption whose victims hold no
// GPU: kube-scheduler deletes victims, and GPU pods are only ever suspended (filter requests
// that). The victims of the nodes kept are passed back unchanged.
func (e *Extender) preempt(ctx context.Context, args *extenderv1.ExtenderPreemptionArgs) *extenderv1.ExtenderPreemptionResult {
	logger := klog.FromContext(ctx)
	out := &extenderv1.ExtenderPreemptionResult{NodeNameToMetaVictims: map[string]*extenderv1.MetaVictims{}}
	meta := args.NodeNameToMetaVictims
	if meta == nil {
		meta = toMeta(args.NodeNameToVictims)
	}
	for node, victims := range meta {
		if victims == nil {
			continue
		}
		if gpuPod := e.holdsGPU(victims.Pods); gpuPod != "" {
			logger.V(3).Info("Dropped a preemption candidate: its victims hold GPUs and would be deleted", "pod", klog.KObj(args.Pod), "node", node, "gpuPod", gpuPod)
			continue
		}
		out.NodeNameToMetaVictims[node] = victims
	}
	return out
}

// holdsGPU names the first victim that asks for GPUs or is unknown (unknown pods are not
// risked), "" when none.
func (e *Extender) holdsGPU(pods []*extenderv1.MetaPod) string {
	for _, mp := range pods {
		objs, err := e.pods.ByIndex(byUID, mp.UID)
		if err != nil || len(objs) == 0 {
			return mp.UID
		}
		p := objs[0].(*v1.Pod)
		if d, err := gpupod.PodDemand(p); err != nil || d.Count > 0 {
			return p.Namespace + "/" + p.Name
		}
	}
	return ""
}

func toMeta(m map[string]*extenderv1.Victims) map[string]*extenderv1.MetaVictims {
	out := make(map[string]*extenderv1.MetaVictims, len(m))
	for node, v := range m {
		if v == nil {
			continue
		}
		mv := &extenderv1.MetaVictims{NumPDBViolations: v.NumPDBViolations}
		for _, p := range v.Pods {
			if p != nil {
				mv.Pods = append(mv.Pods, &extenderv1.MetaPod{UID: string(p.UID)})
			}
		}
		out[node] = mv
	}
	return out
}

// preemptBySuspension selects, on the nodes where the pod does not fit now, the victims whose
// suspension makes room, keeps the node where they move the fewest bytes, and requests their
// suspension. It returns what it did or why it could not, for the filter's messages.
func (e *Extender) preemptBySuspension(ctx context.Context, pod *v1.Pod, d gpupod.Demand, nodes []string) string {
	logger := klog.FromContext(ctx)
	if pod.Spec.PreemptionPolicy != nil && *pod.Spec.PreemptionPolicy == v1.PreemptNever {
		return ""
	}
	_, failed := e.suspensionsOf(pod)
	rules := gpupod.VictimRules{
		Strategy: e.opts.Strategy, DefaultMinRuntime: e.opts.DefaultMinRuntime, Now: e.now(),
		Excluded: func(p *v1.Pod) bool { return failed[p.UID] },
	}
	type choice struct {
		node    string
		victims []gpupod.Victim
		bytes   int64
	}
	var best *choice
	var reasons []string
	for _, node := range nodes {
		gn, err := e.gpuNodes.Get(node)
		if err != nil {
			continue
		}
		objs, err := e.pods.ByIndex(index.PodsByNode, node)
		if err != nil {
			continue
		}
		pods := make([]*v1.Pod, 0, len(objs))
		for _, o := range objs {
			pods = append(pods, o.(*v1.Pod))
		}
		victims, why := gpupod.SelectVictims(gn, pods, pod, d, rules)
		if len(victims) == 0 {
			reasons = append(reasons, node+": "+why)
			continue
		}
		c := &choice{node: node, victims: victims}
		for _, v := range victims {
			c.bytes += v.Bytes
		}
		if best == nil || cmp.Or(cmp.Compare(c.bytes, best.bytes), strings.Compare(c.node, best.node)) < 0 {
			best = c
		}
	}
	if best == nil {
		slices.Sort(reasons)
		if len(reasons) > 3 {
			reasons = append(reasons[:3], fmt.Sprintf("and %d more", len(reasons)-3))
		}
		return "no suspension helps: " + strings.Join(reasons, "; ")
	}
	for _, v := range best.victims {
		ck := gpupod.SuspendCheckpoint(v.Pod, pod)
		if err := e.api.CreateCheckpoint(ctx, ck); err != nil && !apierrors.IsAlreadyExists(err) {
			logger.Error(err, "Requesting a suspension failed", "victim", klog.KObj(v.Pod), "preemptor", klog.KObj(pod))
			return fmt.Sprintf("requesting the suspension of pod %s failed: %v", klog.KObj(v.Pod), err)
		}
		suspensionsRequested.Inc()
		logger.V(2).Info("Suspending pod for a preemptor", "victim", klog.KObj(v.Pod), "preemptor", klog.KObj(pod), "node", best.node, "gpuCheckpoint", klog.KObj(ck))
		if e.recorder != nil {
			e.recorder.Eventf(v.Pod, pod, v1.EventTypeNormal, "Preempted", "Suspending",
				"Preempted by pod %s on node %s: suspending its GPU memory to host memory (GPUCheckpoint %s)", klog.KObj(pod), best.node, ck.Name)
		}
	}
	return fmt.Sprintf("suspending %d pod(s) on node %s for this pod", len(best.victims), best.node)
}

// byUID indexes pods by UID, for the preempt verb's MetaPods.
const byUID = "kybernate.io/by-uid"
