package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// Why explains where a pod stands with its GPUs (-o json|yaml of why).
type Why struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Node      string `json:"node,omitempty"`
	Phase     string `json:"phase"`
	// State is the pod's kybernate.io/state (Running when unset on a bound pod).
	State string `json:"state"`
	// Summary says it in one sentence.
	Summary string `json:"summary"`
	// LastSchedulingFailure is the newest FailedScheduling event of the pod.
	LastSchedulingFailure *EventView `json:"lastSchedulingFailure,omitempty"`
	NominatedNode         string     `json:"nominatedNode,omitempty"`
	// WaitingFor are the suspensions in flight that make room for the pod.
	WaitingFor []CheckpointView `json:"waitingFor,omitempty"`
	// Suspension is the pod's latest successful suspension, while it is suspended.
	Suspension *CheckpointView `json:"suspension,omitempty"`
	// FailedResumes are resumes of the pod since its suspension that failed.
	FailedResumes []CheckpointView `json:"failedResumes,omitempty"`
	// TimeSlice is the pod's kybernate.io/time-slice label: Running or Waiting.
	TimeSlice string          `json:"timeSlice,omitempty"`
	GPUTime   metav1.Duration `json:"gpuTime"`
	// TurnOrder is the queue of pods waiting for GPUs on the pod's (or its nominated) node.
	TurnOrder []TurnEntry `json:"turnOrder,omitempty"`
	// Events are the pod's events, oldest first.
	Events []EventView `json:"events"`
}

// EventView is an event of the pod.
type EventView struct {
	Time    metav1.Time `json:"time"`
	Type    string      `json:"type"`
	Reason  string      `json:"reason"`
	From    string      `json:"from"`
	Message string      `json:"message"`
	Count   int32       `json:"count,omitempty"`
}

// CheckpointView is a GPUCheckpoint in short.
type CheckpointView struct {
	Namespace string               `json:"namespace"`
	Name      string               `json:"name"`
	Pod       string               `json:"pod"`
	Action    kv1.CheckpointAction `json:"action"`
	Reason    kv1.CheckpointReason `json:"reason"`
	Phase     kv1.CheckpointPhase  `json:"phase,omitempty"`
	Preemptor *kv1.PodReference    `json:"preemptor,omitempty"`
	Started   metav1.Time          `json:"started"`
	Message   string               `json:"message,omitempty"`
	// Tier is where a suspension's parked memory is when the storage tiers moved it out of
	// host memory (status.storage): Disk or ObjectStore.
	Tier kv1.StorageTier `json:"tier,omitempty"`
}

func newWhyCommand(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "why POD",
		Short: "Say why a pod is pending, suspended or waiting for a turn",
		Long: `Why explains where a GPU pod stands: for a pending pod the last scheduling failure, the node it
is nominated to and the suspensions that make room for it; for a suspended pod who suspended it
(preemptor, time-slice turn or by hand) and whether it comes back by itself; for pods taking
turns their GPU time and the order in which the node's waiting pods get GPUs. Then the pod's
events, oldest first.`,
		Example: `  kubectl kybernate why train-7b -n ml
  kubectl kybernate why train-7b -o yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Output == outputWide {
				return fmt.Errorf("why prints no table: -o json or yaml")
			}
			if err := checkOutput(o.Output); err != nil {
				return err
			}
			kube, kyb, ns, err := o.target()
			if err != nil {
				return err
			}
			w, err := Explain(cmd.Context(), kube, kyb, ns, args[0])
			if err != nil {
				return err
			}
			if ok, err := printStructured(o.Streams.Out, o.Output, w); ok {
				return err
			}
			return printWhy(o.Streams.Out, w, time.Now())
		},
	}
	o.addOutputFlag(cmd)
	return cmd
}

// Explain gathers why the pod stands where it stands.
func Explain(ctx context.Context, kube kubernetes.Interface, kyb versioned.Interface, ns, name string) (*Why, error) {
	pod, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	snap, err := readSnapshot(ctx, kube, kyb, ns, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()})
	if err != nil {
		return nil, err
	}
	w := &Why{Namespace: ns, Name: name, Node: pod.Spec.NodeName, Phase: string(pod.Status.Phase), NominatedNode: pod.Status.NominatedNodeName,
		TimeSlice: pod.Labels[kv1.LabelTimeSlice], GPUTime: metav1.Duration{Duration: snap.usage(pod).Received}}
	if w.Events, err = podEvents(ctx, kube, pod); err != nil {
		return nil, err
	}
	for i := len(w.Events) - 1; i >= 0; i-- {
		if w.Events[i].Reason == "FailedScheduling" {
			w.LastSchedulingFailure = &w.Events[i]
			break
		}
	}
	queueNode := pod.Spec.NodeName
	switch {
	case pod.Spec.NodeName == "":
		w.State = "Pending"
		queueNode = pod.Status.NominatedNodeName
		if w.WaitingFor, err = suspensionsFor(ctx, kyb, pod); err != nil {
			return nil, err
		}
	default:
		w.State = string(gpupod.StateOf(pod))
	}
	if kv1.PodGPUState(w.State) == kv1.PodSuspended {
		if last := snap.lastSuspend(pod); last != nil {
			v := checkpointView(last)
			w.Suspension = &v
			for _, ck := range snap.checkpoints[string(pod.UID)] {
				if ck.Spec.Action == kv1.ActionResume && ck.Status.Phase == kv1.PhaseFailed && startedAt(ck).After(startedAt(last)) {
					w.FailedResumes = append(w.FailedResumes, checkpointView(ck))
				}
			}
		}
	}
	if queueNode != "" && (w.State == "Pending" || kv1.PodGPUState(w.State) == kv1.PodSuspended || w.TimeSlice != "") {
		if w.TurnOrder, err = turnOrder(ctx, kube, kyb, queueNode); err != nil {
			return nil, err
		}
	}
	w.Summary = summarize(w)
	return w, nil
}

// suspensionsFor lists the suspensions in flight for a preemptor, in every namespace.
func suspensionsFor(ctx context.Context, kyb versioned.Interface, pod *v1.Pod) ([]CheckpointView, error) {
	sel := labels.SelectorFromSet(labels.Set{kv1.LabelPreemptor: string(pod.UID)}).String()
	list, err := kyb.KybernateV1alpha1().GPUCheckpoints("").List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, fmt.Errorf("listing the suspensions for pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	var out []CheckpointView
	for i := range list.Items {
		if !ended(&list.Items[i]) {
			out = append(out, checkpointView(&list.Items[i]))
		}
	}
	return out, nil
}

func checkpointView(ck *kv1.GPUCheckpoint) CheckpointView {
	v := CheckpointView{Namespace: ck.Namespace, Name: ck.Name, Pod: ck.Spec.PodName, Action: ck.Spec.Action, Reason: ck.Spec.Reason,
		Phase: ck.Status.Phase, Preemptor: ck.Spec.Preemptor, Started: metav1.NewTime(startedAt(ck)), Message: ck.Status.Message}
	if ck.Status.Storage != nil {
		v.Tier = ck.Status.Storage.Tier
	}
	return v
}

// podEvents lists the pod's events in the order they happened (last occurrence).
func podEvents(ctx context.Context, kube kubernetes.Interface, pod *v1.Pod) ([]EventView, error) {
	list, err := kube.CoreV1().Events(pod.Namespace).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("involvedObject.uid", string(pod.UID)).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("listing the events of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	events := list.Items
	slices.SortStableFunc(events, func(a, b v1.Event) int { return sortKey(&a).Compare(sortKey(&b)) })
	out := make([]EventView, 0, len(events))
	for i := range events {
		e := &events[i]
		from := e.Source.Component
		if from == "" {
			from = e.ReportingController
		}
		out = append(out, EventView{Time: metav1.NewTime(EventTime(e)), Type: e.Type, Reason: e.Reason, From: from, Message: e.Message, Count: e.Count})
	}
	return out, nil
}

// EventTime is when an event last happened. Events of the events.k8s.io API (the scheduler's)
// carry eventTime and a series, those of the core API (the agent's) lastTimestamp.
func EventTime(e *v1.Event) time.Time {
	t, _ := eventTime(e)
	return t
}

// eventTime is EventTime and whether it has sub-second precision.
func eventTime(e *v1.Event) (time.Time, bool) {
	switch {
	case e.Series != nil && !e.Series.LastObservedTime.IsZero():
		return e.Series.LastObservedTime.Time, true
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time, false
	case !e.EventTime.IsZero():
		return e.EventTime.Time, true
	case !e.FirstTimestamp.IsZero():
		return e.FirstTimestamp.Time, false
	}
	return e.CreationTimestamp.Time, false
}

// sortKey orders events by time. A time in whole seconds (the core API's) is the end of its
// second, after the finer-stamped events of that second: the agent's events answer the
// scheduler's.
func sortKey(e *v1.Event) time.Time {
	t, fine := eventTime(e)
	if !fine {
		t = t.Add(time.Second - time.Microsecond)
	}
	return t
}

// summarize says in one sentence why the pod stands where it stands.
func summarize(w *Why) string {
	switch {
	case w.State == "Pending" && len(w.WaitingFor) > 0:
		return fmt.Sprintf("Pending: waiting for %d suspension(s) to free GPUs on node %s", len(w.WaitingFor), orDash(w.NominatedNode))
	case w.State == "Pending" && w.NominatedNode != "" && position(w) > 0:
		return fmt.Sprintf("Pending: waiting for a turn on node %s (number %d in its queue)", w.NominatedNode, position(w))
	case w.State == "Pending" && w.LastSchedulingFailure != nil:
		return "Pending: not placed: " + w.LastSchedulingFailure.Message
	case w.State == "Pending":
		return "Pending: not placed yet (no scheduling failure recorded)"
	case w.Suspension != nil && w.Suspension.Reason == kv1.ReasonManual:
		return "Suspended by hand: stays suspended until 'kubectl kybernate resume " + w.Name + "'"
	case w.Suspension != nil && w.Suspension.Reason == kv1.ReasonIdle:
		where := ""
		if t := w.Suspension.Tier; t != "" && t != kv1.TierHostMemory {
			where = " (its GPU memory in storage tier " + string(t) + ")"
		}
		return "Asleep" + where + ": no request for its " + kv1.AnnotationIdleAfter + "; kybernate-activator wakes it on the next request"
	case w.Suspension != nil && w.Suspension.Reason == kv1.ReasonSpread:
		return "Suspended to move it off a shared GPU onto an unused GPU of node " + orDash(w.Node) + "; the resume controller brings it back there"
	case w.Suspension != nil && w.Suspension.Preemptor != nil && w.Suspension.Reason == kv1.ReasonPreemption:
		return fmt.Sprintf("Suspended for higher-priority pod %s/%s; resumes when its node has room (number %d in the queue)",
			w.Suspension.Preemptor.Namespace, w.Suspension.Preemptor.Name, position(w))
	case w.Suspension != nil:
		return fmt.Sprintf("Suspended (%s); resumes when its turn comes (number %d in the queue of node %s)", w.Suspension.Reason, position(w), w.Node)
	case w.TimeSlice == kv1.TimeSliceRunning:
		return "Running: its time-slice turn on node " + w.Node
	}
	return fmt.Sprintf("%s on node %s", w.State, orDash(w.Node))
}

// position is the pod's place in TurnOrder, from 1; 0 when not in it.
func position(w *Why) int {
	for i, e := range w.TurnOrder {
		if e.Namespace == w.Namespace && e.Name == w.Name {
			return i + 1
		}
	}
	return 0
}

func printWhy(out io.Writer, w *Why, now time.Time) error {
	fmt.Fprintf(out, "Pod:       %s/%s\n", w.Namespace, w.Name)
	fmt.Fprintf(out, "Node:      %s\n", orDash(w.Node))
	fmt.Fprintf(out, "State:     %s\n", w.State)
	fmt.Fprintf(out, "Why:       %s\n", w.Summary)
	if w.NominatedNode != "" {
		fmt.Fprintf(out, "Nominated: %s\n", w.NominatedNode)
	}
	if w.LastSchedulingFailure != nil {
		fmt.Fprintf(out, "Last scheduling failure (%s ago): %s\n", since(w.LastSchedulingFailure.Time.Time, now), w.LastSchedulingFailure.Message)
	}
	for _, ck := range w.WaitingFor {
		fmt.Fprintf(out, "Waiting for: GPUCheckpoint %s/%s suspending pod %s (%s)\n", ck.Namespace, ck.Name, ck.Pod, orDash(string(ck.Phase)))
	}
	if s := w.Suspension; s != nil {
		by := ""
		if s.Preemptor != nil {
			by = fmt.Sprintf(" for pod %s/%s", s.Preemptor.Namespace, s.Preemptor.Name)
		}
		fmt.Fprintf(out, "Suspended: %s ago, reason %s%s (GPUCheckpoint %s)\n", since(s.Started.Time, now), s.Reason, by, s.Name)
	}
	for _, ck := range w.FailedResumes {
		fmt.Fprintf(out, "Failed resume: %s ago: %s (GPUCheckpoint %s)\n", since(ck.Started.Time, now), orDash(ck.Message), ck.Name)
	}
	if w.TimeSlice != "" {
		fmt.Fprintf(out, "Time slice: %s, GPU time received %s\n", w.TimeSlice, w.GPUTime.Round(time.Second))
	}
	if len(w.TurnOrder) > 0 {
		fmt.Fprintln(out, "\nTurn order (who gets GPUs first):")
		t := newTable(out, "  #", "POD", "STATE", "PRIORITY", "GPU-TIME", "WAITING")
		for i, e := range w.TurnOrder {
			mark := "  "
			if e.Namespace == w.Namespace && e.Name == w.Name {
				mark = "->"
			}
			t.row(fmt.Sprintf("%s%d", mark, i+1), e.Namespace+"/"+e.Name, e.State, fmt.Sprint(e.Priority), e.GPUTime.Round(time.Second).String(), since(e.WaitingSince.Time, now))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(out, "\nEvents (oldest first):")
	if len(w.Events) == 0 {
		fmt.Fprintln(out, "  <none>")
		return nil
	}
	t := newTable(out, "  AGE", "TYPE", "REASON", "FROM", "MESSAGE")
	for _, e := range w.Events {
		t.row("  "+since(e.Time.Time, now), e.Type, e.Reason, e.From, strings.ReplaceAll(e.Message, "\n", " "))
	}
	return t.flush()
}
