package app

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/nodeagent/checkpoint"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/tier"
)

// realTierNode is the agent's own node for the tier policy: its suspended pods are those
// without GPUs whose single container is frozen (Suspended), holding the resident memory of
// their processes; the policy spills them through the node's Containers.
func (a *agent) realTierNode(c *tier.Containers, runtime checkpoint.Runtime) tier.Node {
	node, procRoot := a.o.NodeName, a.o.ProcRoot
	pods := a.podFactory.Core().V1().Pods().Lister()
	parked := func(ctx context.Context) ([]tier.ParkedPod, error) {
		list, err := pods.List(labels.Everything())
		if err != nil {
			return nil, err
		}
		var out []tier.ParkedPod
		for _, pod := range list {
			if !frozenSpillable(pod, node) {
				continue
			}
			n, err := podResident(ctx, runtime, procRoot, pod)
			if err != nil {
				klog.FromContext(ctx).V(4).Info("Reading a suspended pod's memory failed; it is not spilled this time", "pod", klog.KObj(pod), "err", err)
				continue
			}
			out = append(out, tier.ParkedPod{Pod: pod, Bytes: n})
		}
		return out, nil
	}
	memory := func() int64 {
		n, err := memTotal(filepath.Join(procRoot, "meminfo"))
		if err != nil {
			klog.Background().Error(err, "Reading the node's memory for --parked-memory-high-water failed")
		}
		return n
	}
	return tier.Node{Containers: c, Parked: parked, Memory: memory}
}

// frozenSpillable: a running pod of node without GPUs, Suspended (its containers frozen), with
// one container (a spill checkpoints the pod's only container).
func frozenSpillable(pod *v1.Pod, node string) bool {
	if pod.Spec.NodeName != node || pod.DeletionTimestamp != nil || pod.Status.Phase != v1.PodRunning || len(pod.Spec.Containers) != 1 {
		return false
	}
	if gpupod.StateOf(pod) != kv1.PodSuspended {
		return false
	}
	d, err := gpupod.PodDemand(pod)
	return err == nil && d.Count == 0 && len(gpupod.AssignedGPUs(pod)) == 0
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
		n, err := statusField(data, "VmRSS:")
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/status: %w", pid, err)
		}
		total += n
	}
	return total, nil
}

// memTotal reads MemTotal from a meminfo file.
func memTotal(path string) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return statusField(data, "MemTotal:")
}

// statusField reads a "Key:   123 kB" line of /proc/PID/status or /proc/meminfo, in bytes; a
// process without the line (a kernel thread) has 0.
func statusField(data []byte, key string) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), key)
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("%s %q: want a number of kB", key, strings.TrimSpace(rest))
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || n < 0 {
			return 0, errors.Join(fmt.Errorf("%s %q: want a number of kB", key, strings.TrimSpace(rest)), err)
		}
		return n << 10, nil
	}
	return 0, sc.Err()
}
