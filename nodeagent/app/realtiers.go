package app

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/nodeagent/checkpoint"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/status"
	"github.com/kybernate/kybernate/nodeagent/tier"
)

// realTierNode is the agent's own node for the tier policy: its suspended pods are those in
// state Suspended with one container that the kubelet creates again after a spill: without
// GPUs their container is frozen, holding the resident memory of its processes; with GPUs
// (engine not nil) their GPU memory is parked in their processes' host memory. The policy
// spills them through the node's Containers.
func (a *agent) realTierNode(c *tier.Containers, runtime checkpoint.Runtime, e *engine.Engine) tier.Node {
	node, procRoot := a.o.NodeName, a.o.ProcRoot
	pods := a.podFactory.Core().V1().Pods().Lister()
	kept := &keptInMemory{recorder: a.recorder}
	parked := func(ctx context.Context) ([]tier.ParkedPod, error) {
		list, err := pods.List(labels.Everything())
		if err != nil {
			return nil, err
		}
		var out []tier.ParkedPod
		var never []*v1.Pod
		for _, pod := range list {
			if !suspendedOn(pod, node, e != nil) {
				continue
			}
			if !tier.Recreated(pod) {
				never = append(never, pod)
				continue
			}
			n, err := podResident(ctx, runtime, procRoot, pod)
			if err != nil {
				klog.FromContext(ctx).V(4).Info("Reading a suspended pod's memory failed; it is not spilled this time", "pod", klog.KObj(pod), "err", err)
				continue
			}
			out = append(out, tier.ParkedPod{Pod: pod, Bytes: n})
		}
		kept.tell(never)
		return out, nil
	}
	memory := func() int64 {
		n, err := status.Meminfo{Path: filepath.Join(procRoot, "meminfo")}.MemTotal()
		if err != nil {
			klog.Background().Error(err, "Reading the node's memory for --parked-memory-high-water failed")
		}
		return n
	}
	return tier.Node{Engine: e, Containers: c, Parked: parked, Memory: memory, Model: a.gpuModel}
}

// gpuModel is the model of the node's GPU with this UUID, "" when NVML does not list it.
func (a *agent) gpuModel(ctx context.Context, uuid string) string {
	inv, err := a.nvml.Read(ctx)
	if err != nil {
		return ""
	}
	for _, g := range inv.GPUs {
		if g.UUID == uuid {
			return g.Model
		}
	}
	return ""
}

// suspendedOn: a running pod of node in state Suspended with one container (a spill
// checkpoints the pod's only container), without GPUs, or with GPUs when gpus (the node's CUDA
// driver is usable).
func suspendedOn(pod *v1.Pod, node string, gpus bool) bool {
	if pod.Spec.NodeName != node || pod.DeletionTimestamp != nil || pod.Status.Phase != v1.PodRunning || len(pod.Spec.Containers) != 1 {
		return false
	}
	return gpupod.StateOf(pod) == kv1.PodSuspended && (gpus || gpupod.WithoutGPUs(pod))
}

// keptInMemory tells each suspended pod that the policy leaves in host memory because the
// kubelet would not create its container again (restartPolicy Never), once per pod.
type keptInMemory struct {
	recorder record.EventRecorder
	mu       sync.Mutex
	told     map[types.UID]bool
}

func (k *keptInMemory) tell(pods []*v1.Pod) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := make(map[types.UID]bool, len(pods))
	for _, pod := range pods {
		now[pod.UID] = true
		if !k.told[pod.UID] {
			k.recorder.Eventf(pod, v1.EventTypeNormal, tier.EventKeptInHostMemory,
				"Not spilled to the storage tiers: its restartPolicy is Never, so the kubelet would not create its container again for the restore; its memory stays in host memory")
		}
	}
	k.told = now
}

// podResident is the resident memory (VmRSS) of the processes of the pod's only container.
func podResident(ctx context.Context, runtime checkpoint.Runtime, procRoot string, pod *v1.Pod) (int64, error) {
	ctr, err := runtime.FindContainer(ctx, image.Pod{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID)}, "")
	if err != nil {
		return 0, err
	}
	pids, err := runtime.Pids(ctx, ctr.ID)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, pid := range pids {
		data, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "status"))
		if err != nil {
			continue // gone
		}
		// A process without the line (a kernel thread) has none.
		n, _, err := status.KiBField(bytes.NewReader(data), "process status", "VmRSS")
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/status: %w", pid, err)
		}
		total += n
	}
	return total, nil
}
