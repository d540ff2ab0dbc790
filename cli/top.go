package cli

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// PodGPUTime is one GPU pod's GPU time (-o json|yaml of top).
type PodGPUTime struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Node      string `json:"node"`
	State     string `json:"state"`
	GPUs      int    `json:"gpus"`
	// GPUTime is the time the pod's memory has been on its GPUs since it started.
	GPUTime metav1.Duration `json:"gpuTime"`
	// Share is GPUTime over the time since the pod started.
	Share float64 `json:"share"`
	// Suspensions counts the pod's successful suspensions.
	Suspensions int `json:"suspensions"`
	// TimeSlice is its kybernate.io/time-slice label (Running or Waiting), if it takes turns.
	TimeSlice string `json:"timeSlice,omitempty"`
}

func newTopCommand(o *Options) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Show the GPU time of GPU pods, most first",
		Long: `Top shows each GPU pod's GPU time: how long its memory has been on its GPUs since it started,
read from its GPUCheckpoints (suspensions and resumes) as the time-slice controller reads it,
and that time's share of the pod's life.`,
		Example: `  kubectl kybernate top -n ml
  kubectl kybernate top -A -o wide`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(o.Output); err != nil {
				return err
			}
			kube, kyb, ns, err := o.target()
			if err != nil {
				return err
			}
			if all {
				ns = metav1.NamespaceAll
			}
			snap, err := readSnapshot(cmd.Context(), kube, kyb, ns, metav1.ListOptions{})
			if err != nil {
				return err
			}
			rows := gpuTimes(snap)
			if ok, err := printStructured(o.Streams.Out, o.Output, rows); ok {
				return err
			}
			return o.printTop(rows)
		},
	}
	o.addOutputFlag(cmd)
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "Show the GPU pods of every namespace.")
	return cmd
}

// gpuTimes lists the bound GPU pods of the snapshot by GPU time, most first.
func gpuTimes(s *snapshot) []PodGPUTime {
	rows := []PodGPUTime{}
	for _, p := range s.pods {
		d, err := gpupod.PodDemand(p)
		if err != nil || d.Count == 0 || p.Spec.NodeName == "" {
			continue
		}
		u := s.usage(p)
		r := PodGPUTime{Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName, State: string(gpupod.StateOf(p)), GPUs: d.Count,
			GPUTime: metav1.Duration{Duration: u.Received}, TimeSlice: p.Labels[kv1.LabelTimeSlice]}
		if p.Status.StartTime != nil {
			if life := s.now.Sub(p.Status.StartTime.Time); life > 0 {
				r.Share = min(float64(u.Received)/float64(life), 1)
			}
		}
		for _, ck := range s.checkpoints[string(p.UID)] {
			if ck.Spec.Action == kv1.ActionSuspend && ck.Status.Phase == kv1.PhaseSucceeded {
				r.Suspensions++
			}
		}
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b PodGPUTime) int {
		return cmp.Or(cmp.Compare(b.GPUTime.Duration, a.GPUTime.Duration), strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	return rows
}

func (o *Options) printTop(rows []PodGPUTime) error {
	wide := o.Output == outputWide
	header := []string{"NAMESPACE", "NAME", "STATE", "GPUS", "GPU-TIME", "SHARE"}
	if wide {
		header = append(header, "NODE", "SUSPENSIONS", "TIME-SLICE")
	}
	t := newTable(o.Streams.Out, header...)
	for _, r := range rows {
		cells := []string{r.Namespace, r.Name, r.State, fmt.Sprint(r.GPUs), r.GPUTime.Round(time.Second).String(), fmt.Sprintf("%.0f%%", 100*r.Share)}
		if wide {
			cells = append(cells, r.Node, fmt.Sprint(r.Suspensions), orDash(r.TimeSlice))
		}
		t.row(cells...)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(rows) == 0 {
		fmt.Fprintln(o.Streams.ErrOut, "No GPU pods found.")
	}
	return nil
}
