package status

import (
	"cmp"
	"context"
	"errors"
	"slices"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/inventory"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// Reasons of the GPUNode conditions the agent writes.
const (
	ReasonAgentReporting  = "AgentReporting"
	ReasonInventoryFailed = "InventoryFailed"
	ReasonAgentStopped    = "AgentStopped"
	ReasonSimulated       = "Simulated"
	ReasonRealGPUs        = "RealGPUs"
)

// Condition messages. The simulated one is what people see in kubectl describe gpunode: it
// must leave no doubt.
const (
	messageReportingReal      = "kybernate-agent reports this node's GPUs from NVML"
	messageReportingSimulated = "kybernate-agent --simulate reports this node's simulated GPUs"
	messageSimulated          = "SIMULATED: the GPUs, GPU processes and checkpoints of this node are simulated by kybernate-agent --simulate (go-nvml mock machine, cuda/fake driver); nothing on this node touches a real GPU"
	messageReal               = "GPUs are real and read from NVML"
	messageStopped            = "kybernate-agent stopped; this status is no longer updated"
)

// observation is what the agent saw on a node at one moment.
type observation struct {
	inv    *inventory.Inventory
	invErr error
	// pods maps the PIDs of GPU processes to their pods; PIDs of processes in no pod the agent
	// knows are missing.
	pods map[int32]podmap.PodRef
	// suspended are the node's suspended pods.
	suspended []kv1.PodGPUUsage
	// memAvailable is the host's MemAvailable; memErr when it could not be read.
	memAvailable int64
	memErr       error
}

// observe reads a node's sources.
func observe(ctx context.Context, src Node) observation {
	logger := klog.FromContext(ctx)
	var obs observation
	obs.inv, obs.invErr = src.Inventory.Read(ctx)
	if obs.invErr == nil && src.Pods != nil {
		obs.pods = map[int32]podmap.PodRef{}
		for _, g := range obs.inv.GPUs {
			for _, p := range g.Processes {
				if _, done := obs.pods[p.PID]; done {
					continue
				}
				pod, err := src.Pods.PodOfPID(ctx, p.PID)
				if err != nil {
					// Host processes and processes of pods not seen yet count as memory in use
					// by others ("foreign"), which is what they are to the scheduler.
					if !errors.Is(err, podmap.ErrNotInPod) {
						logger.V(4).Info("GPU process not mapped to a pod", "pid", p.PID, "gpu", g.UUID, "err", err)
					}
					continue
				}
				obs.pods[p.PID] = pod
			}
		}
	}
	if src.Suspended != nil {
		obs.suspended = src.Suspended.SuspendedPods()
	}
	if src.HostMemory != nil {
		obs.memAvailable, obs.memErr = src.HostMemory.MemAvailable()
	} else {
		obs.memErr = errors.New("no host memory source")
	}
	return obs
}

// desiredStatus is the status the GPUNode should have given what was observed and what it has
// now (cur, nil for a new object). Conditions keep their transition times while their status
// stays.
func desiredStatus(cur *kv1.GPUNode, obs observation, cfg Config, now metav1.Time) kv1.GPUNodeStatus {
	var st kv1.GPUNodeStatus
	var generation int64
	if cur != nil {
		st = *cur.Status.DeepCopy()
		generation = cur.Generation
	}

	ready := metav1.Condition{Type: kv1.GPUNodeReady, Status: metav1.ConditionTrue, Reason: ReasonAgentReporting, Message: messageReportingReal}
	if cfg.Simulated {
		ready.Message = messageReportingSimulated
	}
	if obs.invErr != nil {
		// Keep the GPUs last seen: the scheduler keeps placing by them, and GPUs that vanish
		// from the status would look free of pods.
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, ReasonInventoryFailed, "reading GPU inventory: "+obs.invErr.Error()
	} else {
		st.GPUs = gpuStatuses(obs.inv, obs.pods)
		st.DriverVersion = obs.inv.DriverVersion
		st.CUDADriverVersion = obs.inv.CUDADriverVersion
		st.CheckpointCapability = Capability(obs.inv.CUDADriverVersion)
	}

	st.RestoreMarginBytes = cfg.RestoreMargin
	st.SuspendedPods = slices.Clone(obs.suspended)
	slices.SortFunc(st.SuspendedPods, comparePods)
	var parked int64
	for _, p := range st.SuspendedPods {
		if p.Residency == kv1.Suspended {
			parked += p.Bytes // spilled pods (Disk, ObjectStore) hold no host memory
		}
	}
	st.HostMemory.ParkedBytes = parked
	if obs.memErr == nil {
		parkable := max(obs.memAvailable-cfg.HostMemoryReserve, 0)
		// MemAvailable moves all the time; write it only when it moved by a step, so that the
		// status is written on changes that matter.
		if d := parkable - st.HostMemory.ParkableBytes; cur == nil || d >= cfg.HostMemoryStep || -d >= cfg.HostMemoryStep || parkable == 0 {
			st.HostMemory.ParkableBytes = parkable
		}
	}

	ready.ObservedGeneration = generation
	simulated := metav1.Condition{Type: kv1.GPUNodeSimulated, Status: metav1.ConditionFalse, Reason: ReasonRealGPUs, Message: messageReal, ObservedGeneration: generation}
	if cfg.Simulated {
		simulated.Status, simulated.Reason, simulated.Message = metav1.ConditionTrue, ReasonSimulated, messageSimulated
	}
	setCondition(&st.Conditions, ready, now)
	setCondition(&st.Conditions, simulated, now)
	return st
}

// setCondition is meta.SetStatusCondition with a given time for a transition.
func setCondition(conds *[]metav1.Condition, c metav1.Condition, now metav1.Time) {
	c.LastTransitionTime = now
	meta.SetStatusCondition(conds, c)
}

// gpuStatuses turns the inventory into GPU statuses, with the pods whose processes hold memory
// on each GPU.
func gpuStatuses(inv *inventory.Inventory, pods map[int32]podmap.PodRef) []kv1.GPUStatus {
	// Which GPUs each pod is on, in index order, for PodGPUUsage.GPUs.
	podGPUs := map[podmap.PodRef][]string{}
	for _, g := range inv.GPUs {
		seen := map[podmap.PodRef]bool{}
		for _, p := range g.Processes {
			pod, ok := pods[p.PID]
			if ok && !seen[pod] {
				seen[pod] = true
				podGPUs[pod] = append(podGPUs[pod], g.UUID)
			}
		}
	}
	out := make([]kv1.GPUStatus, 0, len(inv.GPUs))
	for _, g := range inv.GPUs {
		s := kv1.GPUStatus{
			UUID:             g.UUID,
			Index:            g.Index,
			Model:            g.Model,
			MemoryTotalBytes: g.MemoryTotalBytes,
			MemoryUsedBytes:  g.MemoryUsedBytes,
		}
		byPod := map[podmap.PodRef]int{}
		for _, p := range g.Processes {
			pod, ok := pods[p.PID]
			if !ok {
				continue
			}
			i, ok := byPod[pod]
			if !ok {
				i = len(s.Pods)
				byPod[pod] = i
				s.Pods = append(s.Pods, kv1.PodGPUUsage{
					Namespace: pod.Namespace,
					Name:      pod.Name,
					UID:       string(pod.UID),
					Residency: kv1.Resident,
					GPUs:      slices.Clone(podGPUs[pod]),
				})
			}
			s.Pods[i].Bytes += p.UsedBytes
		}
		slices.SortFunc(s.Pods, comparePods)
		out = append(out, s)
	}
	return out
}

func comparePods(a, b kv1.PodGPUUsage) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.UID, b.UID))
}

// Capability is what the checkpoint API of a CUDA driver version can do.
func Capability(cudaDriverVersion int32) kv1.CheckpointCapability {
	c := cuda.CapabilityOf(int(cudaDriverVersion))
	switch {
	case c.Remap:
		return kv1.CheckpointRemap
	case c.Checkpoint:
		return kv1.CheckpointLockCheckpoint
	}
	return kv1.CheckpointNone
}
