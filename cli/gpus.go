package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// TierHostMemory is where a suspended pod's GPU memory is parked: in the memory of its
// process on the node, the only tier so far.
const TierHostMemory = "HostMemory"

// NodeGPUs is one node's GPUs as gpus prints them (-o json|yaml).
type NodeGPUs struct {
	Node string `json:"node"`
	// Simulated is true when the node's GPUs are simulated by an agent in --simulate mode.
	Simulated bool `json:"simulated"`
	Ready     bool `json:"ready"`
	// ParkableBytes is the host memory that may still take GPU memory of suspended pods;
	// ParkedBytes what it holds.
	ParkableBytes int64     `json:"parkableBytes"`
	ParkedBytes   int64     `json:"parkedBytes"`
	GPUs          []GPUView `json:"gpus"`
}

// GPUView is one GPU: its memory and the pods on it and parked from it.
type GPUView struct {
	Index            int32          `json:"index"`
	UUID             string         `json:"uuid"`
	Model            string         `json:"model"`
	MemoryUsedBytes  int64          `json:"memoryUsedBytes"`
	MemoryTotalBytes int64          `json:"memoryTotalBytes"`
	Resident         []PodOnGPU     `json:"resident"`
	Suspended        []SuspendedPod `json:"suspended"`
}

// PodOnGPU is a pod whose GPU memory is on the GPU.
type PodOnGPU struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Bytes     int64  `json:"bytes"`
}

// SuspendedPod is a pod suspended from the GPU: its parked bytes (over all its GPUs) and
// where they are.
type SuspendedPod struct {
	Namespace   string `json:"namespace"`
	Name        string `json:"name"`
	ParkedBytes int64  `json:"parkedBytes"`
	Tier        string `json:"tier"`
}

func newGPUsCommand(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "gpus [NODE...]",
		Short: "List the GPUs of every node (or of the named ones) with their memory and pods",
		Long: `List the GPUs the node agents report: model, memory used and total, the pods whose memory is on
each GPU and the suspended pods parked from it, with their parked bytes and storage tier. Pods of
every namespace are shown: a GPU is shared across namespaces.`,
		Example: `  kubectl kybernate gpus
  kubectl kybernate gpus node-1 -o wide
  kubectl kybernate gpus -o json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(o.Output); err != nil {
				return err
			}
			_, kyb, err := o.clients()
			if err != nil {
				return err
			}
			nodes, err := ListGPUs(cmd.Context(), kyb, args)
			if err != nil {
				return err
			}
			return o.printGPUs(nodes)
		},
	}
	o.addOutputFlag(cmd)
	return cmd
}

// ListGPUs reads the GPUNodes (all, or those named) into the gpus view, sorted by node and
// GPU index.
func ListGPUs(ctx context.Context, kyb versioned.Interface, names []string) ([]NodeGPUs, error) {
	var gns []kv1.GPUNode
	if len(names) == 0 {
		list, err := kyb.KybernateV1alpha1().GPUNodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("listing GPUNodes: %w", err)
		}
		gns = list.Items
	}
	for _, name := range names {
		gn, err := kyb.KybernateV1alpha1().GPUNodes().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("node %s has no GPUNode: no Kybernate agent serves it", name)
		}
		if err != nil {
			return nil, fmt.Errorf("reading GPUNode %s: %w", name, err)
		}
		gns = append(gns, *gn)
	}
	out := make([]NodeGPUs, 0, len(gns))
	for i := range gns {
		out = append(out, nodeView(&gns[i]))
	}
	slices.SortFunc(out, func(a, b NodeGPUs) int { return strings.Compare(a.Node, b.Node) })
	return out, nil
}

func nodeView(gn *kv1.GPUNode) NodeGPUs {
	n := NodeGPUs{
		Node:          gn.Name,
		Simulated:     conditionTrue(gn.Status.Conditions, kv1.GPUNodeSimulated),
		Ready:         conditionTrue(gn.Status.Conditions, kv1.GPUNodeReady),
		ParkableBytes: gn.Status.HostMemory.ParkableBytes,
		ParkedBytes:   gn.Status.HostMemory.ParkedBytes,
		GPUs:          []GPUView{},
	}
	for _, g := range gn.Status.GPUs {
		v := GPUView{Index: g.Index, UUID: g.UUID, Model: g.Model, MemoryUsedBytes: g.MemoryUsedBytes,
			MemoryTotalBytes: g.MemoryTotalBytes, Resident: []PodOnGPU{}, Suspended: []SuspendedPod{}}
		for _, p := range g.Pods {
			if p.Residency == kv1.Suspended {
				continue // listed below from the node's suspended pods
			}
			v.Resident = append(v.Resident, PodOnGPU{Namespace: p.Namespace, Name: p.Name, Bytes: p.Bytes})
		}
		for _, p := range gn.Status.SuspendedPods {
			if slices.Contains(p.GPUs, g.UUID) {
				tier := TierHostMemory
				if p.Residency == kv1.OnDisk || p.Residency == kv1.InObjectStore {
					tier = string(p.Residency)
				}
				v.Suspended = append(v.Suspended, SuspendedPod{Namespace: p.Namespace, Name: p.Name, ParkedBytes: p.Bytes, Tier: tier})
			}
		}
		n.GPUs = append(n.GPUs, v)
	}
	slices.SortFunc(n.GPUs, func(a, b GPUView) int { return int(a.Index - b.Index) })
	return n
}

func conditionTrue(conds []metav1.Condition, typ string) bool {
	for _, c := range conds {
		if c.Type == typ {
			return c.Status == metav1.ConditionTrue
		}
	}
	return false
}

func (o *Options) printGPUs(nodes []NodeGPUs) error {
	if ok, err := printStructured(o.Streams.Out, o.Output, nodes); ok {
		return err
	}
	wide := o.Output == outputWide
	header := []string{"NODE", "GPU", "MODEL", "MEMORY", "RESIDENT", "SUSPENDED"}
	if wide {
		header = []string{"NODE", "GPU", "UUID", "MODEL", "MEMORY", "RESIDENT", "SUSPENDED", "READY", "SIMULATED"}
	}
	t := newTable(o.Streams.Out, header...)
	simulated := false
	for _, n := range nodes {
		node := n.Node
		if n.Simulated && !wide {
			node, simulated = node+"*", true
		}
		for _, g := range n.GPUs {
			mem := gib(g.MemoryUsedBytes) + "/" + gib(g.MemoryTotalBytes)
			var resident, suspended []string
			for _, p := range g.Resident {
				s := p.Namespace + "/" + p.Name
				if wide {
					s += " " + bytes(p.Bytes)
				}
				resident = append(resident, s)
			}
			for _, p := range g.Suspended {
				suspended = append(suspended, fmt.Sprintf("%s/%s %s %s", p.Namespace, p.Name, bytes(p.ParkedBytes), p.Tier))
			}
			cells := []string{node, fmt.Sprint(g.Index), g.Model, mem, orDash(strings.Join(resident, ",")), orDash(strings.Join(suspended, ","))}
			if wide {
				cells = []string{node, fmt.Sprint(g.Index), g.UUID, g.Model, mem, orDash(strings.Join(resident, ",")),
					orDash(strings.Join(suspended, ",")), fmt.Sprint(n.Ready), fmt.Sprint(n.Simulated)}
			}
			t.row(cells...)
		}
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(nodes) == 0 {
		fmt.Fprintln(o.Streams.ErrOut, "No GPUNodes found: no Kybernate agent reports GPUs in this cluster.")
	}
	if simulated {
		fmt.Fprintln(o.Streams.Out, "* simulated GPUs (kybernate-agent --simulate): nothing on these nodes touches a real GPU")
	}
	return nil
}
