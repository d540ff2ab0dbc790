package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/kybernate/kybernate/apis/config"
	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// moveFlags are the flags of suspend and resume.
type moveFlags struct {
	wait    bool
	timeout time.Duration
	gpus    []string
}

func (f *moveFlags) add(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.wait, "wait", true, "Wait until the node agent has carried the request out, and fail when it failed.")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 5*time.Minute, "How long --wait waits.")
}

func newSuspendCommand(o *Options) *cobra.Command {
	var f moveFlags
	cmd := &cobra.Command{
		Use:   "suspend POD",
		Short: "Suspend a pod: park its GPU memory in host memory, its process lives on",
		Long: `Suspend asks the pod's node agent to move the pod's GPU memory into host memory and free its
GPUs, through a GPUCheckpoint with action Suspend and reason Manual, as the scheduler does for
preemptions. A manually suspended pod stays suspended until 'kubectl kybernate resume'. Pods with
kybernate.io/preemption: Never are not suspended.`,
		Example: `  kubectl kybernate suspend train-7b -n ml
  kubectl kybernate suspend train-7b --wait=false`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kube, kyb, ns, err := o.target()
			if err != nil {
				return err
			}
			ck, err := Suspend(cmd.Context(), kube, kyb, ns, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(o.Streams.Out, "gpucheckpoint.kybernate.io/%s created: suspending pod %s/%s\n", ck.Name, ns, args[0])
			return o.finish(cmd.Context(), kyb, ck, f)
		},
	}
	f.add(cmd)
	return cmd
}

func newResumeCommand(o *Options) *cobra.Command {
	var f moveFlags
	cmd := &cobra.Command{
		Use:   "resume POD [--gpu UUID]...",
		Short: "Resume a suspended pod, on its GPUs or on other GPUs of its node",
		Long: `Resume asks the pod's node agent to put the pod's GPU memory back, through a GPUCheckpoint with
action Resume and reason Manual, as the scheduler's resume controller does: the pod is marked
Resuming on its target GPUs first, so the scheduler counts their memory for it. Without --gpu
the pod goes back onto its own GPUs, or onto GPUs of its node with room when its own have none.
With --gpu (one UUID per GPU of the pod, in order) it goes there. A target without the free
memory and slot the pod needs is refused here: a restore without room destroys the GPU state.`,
		Example: `  kubectl kybernate resume train-7b -n ml
  kubectl kybernate resume train-7b --gpu GPU-4f0c...`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kube, kyb, ns, err := o.target()
			if err != nil {
				return err
			}
			ck, err := Resume(cmd.Context(), kube, kyb, ns, args[0], f.gpus)
			if err != nil {
				return err
			}
			where := "its GPUs"
			if len(ck.Spec.TargetGPUs) > 0 {
				where = "GPUs " + strings.Join(ck.Spec.TargetGPUs, ",")
			}
			fmt.Fprintf(o.Streams.Out, "gpucheckpoint.kybernate.io/%s created: resuming pod %s/%s onto %s\n", ck.Name, ns, args[0], where)
			return o.finish(cmd.Context(), kyb, ck, f)
		},
	}
	f.add(cmd)
	cmd.Flags().StringSliceVar(&f.gpus, "gpu", nil, "UUID of a GPU of the pod's node to resume onto; one per GPU of the pod, in the order of its kybernate.io/gpus.")
	return cmd
}

// target returns the clients and the namespace of the flags.
func (o *Options) target() (kubernetes.Interface, versioned.Interface, string, error) {
	kube, kyb, err := o.clients()
	if err != nil {
		return nil, nil, "", err
	}
	ns, err := o.namespace()
	return kube, kyb, ns, err
}

// finish waits for the GPUCheckpoint when asked to and prints how it ended.
func (o *Options) finish(ctx context.Context, kyb versioned.Interface, ck *kv1.GPUCheckpoint, f moveFlags) error {
	if !f.wait {
		return nil
	}
	done, err := WaitForCheckpoint(ctx, kyb, ck.Namespace, ck.Name, f.timeout)
	if err != nil {
		return err
	}
	verb := map[kv1.CheckpointAction]string{kv1.ActionSuspend: "suspended", kv1.ActionResume: "resumed"}[done.Spec.Action]
	if done.Status.Phase == kv1.PhaseFailed {
		return fmt.Errorf("pod %s/%s was not %s: %s (GPUCheckpoint %s; kubectl describe pod shows the events)",
			done.Namespace, done.Spec.PodName, verb, orDash(done.Status.Message), done.Name)
	}
	// The agent's message has the step timings; the time stamps have whole seconds only.
	fmt.Fprintf(o.Streams.Out, "pod %s/%s %s on node %s: %s\n", done.Namespace, done.Spec.PodName, verb, done.Status.NodeName,
		orDash(done.Status.Message))
	return nil
}

// WaitForCheckpoint waits until the GPUCheckpoint succeeded or failed and returns it.
func WaitForCheckpoint(ctx context.Context, kyb versioned.Interface, ns, name string, timeout time.Duration) (*kv1.GPUCheckpoint, error) {
	var last *kv1.GPUCheckpoint
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		ck, err := kyb.KybernateV1alpha1().GPUCheckpoints(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		last = ck
		return ended(ck), nil
	})
	if err != nil {
		phase := kv1.CheckpointPhase("")
		if last != nil {
			phase = last.Status.Phase
		}
		return nil, fmt.Errorf("waiting for GPUCheckpoint %s/%s (phase %q): %w", ns, name, orDash(string(phase)), err)
	}
	return last, nil
}

func ended(ck *kv1.GPUCheckpoint) bool {
	return ck.Status.Phase == kv1.PhaseSucceeded || ck.Status.Phase == kv1.PhaseFailed
}

// Suspend requests the suspension of a running GPU pod: a GPUCheckpoint with action Suspend and
// reason Manual, owned by the pod. It refuses pods that cannot be suspended now, with the reason.
func Suspend(ctx context.Context, kube kubernetes.Interface, kyb versioned.Interface, ns, name string) (*kv1.GPUCheckpoint, error) {
	pod, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if err := movable(pod); err != nil {
		return nil, err
	}
	if s := gpupod.StateOf(pod); s != kv1.PodRunning {
		return nil, fmt.Errorf("pod %s/%s is %s (annotation %s): only a Running GPU pod can be suspended", ns, name, s, kv1.AnnotationState)
	}
	if gpupod.NeverSuspended(pod) {
		return nil, fmt.Errorf("pod %s/%s has %s: %s and is never suspended", ns, name, kv1.AnnotationPreemption, kv1.PreemptionNever)
	}
	if err := noneInFlight(ctx, kyb, pod); err != nil {
		return nil, err
	}
	ck := checkpointFor(pod, "suspend", kv1.GPUCheckpointSpec{Action: kv1.ActionSuspend, Reason: kv1.ReasonManual})
	created, err := kyb.KybernateV1alpha1().GPUCheckpoints(ns).Create(ctx, ck, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("requesting the suspension of pod %s/%s: %w", ns, name, err)
	}
	return created, nil
}

// Resume requests the resume of a suspended pod onto gpus (UUIDs of its node, one per GPU of
// the pod), or, with none, onto its own GPUs or others of its node with room. Like the
// scheduler's resume controller it marks the pod Resuming on its target GPUs before it creates
// the GPUCheckpoint (action Resume, reason Manual), and takes the mark back when that fails.
func Resume(ctx context.Context, kube kubernetes.Interface, kyb versioned.Interface, ns, name string, gpus []string) (*kv1.GPUCheckpoint, error) {
	pod, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if err := movable(pod); err != nil {
		return nil, err
	}
	if s := gpupod.StateOf(pod); s != kv1.PodSuspended {
		return nil, fmt.Errorf("pod %s/%s is %s (annotation %s): only a Suspended pod can be resumed", ns, name, s, kv1.AnnotationState)
	}
	if err := noneInFlight(ctx, kyb, pod); err != nil {
		return nil, err
	}
	from := gpupod.AssignedGPUs(pod)
	target, err := resumeTarget(ctx, kube, kyb, pod, from, gpus)
	if err != nil {
		return nil, err
	}
	spec := kv1.GPUCheckpointSpec{Action: kv1.ActionResume, Reason: kv1.ReasonManual}
	if !slices.Equal(from, target) {
		spec.TargetGPUs = target
	}
	ck := checkpointFor(pod, "resume", spec)
	if suspension, err := lastSuspension(ctx, kyb, pod); err != nil {
		return nil, err
	} else if suspension != nil {
		// Links the resume to the suspension it undoes, as the resume controller does.
		ck.Labels = map[string]string{kv1.LabelSuspension: string(suspension.UID)}
	}
	if err := markPod(ctx, kube, pod, pod.ResourceVersion, target, kv1.PodSuspended, kv1.PodResuming); err != nil {
		return nil, fmt.Errorf("marking pod %s/%s Resuming: %w", ns, name, err)
	}
	created, err := kyb.KybernateV1alpha1().GPUCheckpoints(ns).Create(ctx, ck, metav1.CreateOptions{})
	if err != nil {
		// Take the mark back, so that the pod is not left Resuming with nobody resuming it.
		undo := markPod(ctx, kube, pod, "", from, kv1.PodResuming, kv1.PodSuspended) // the rollback of a resume
		return nil, errors.Join(fmt.Errorf("requesting the resume of pod %s/%s: %w", ns, name, err), undo)
	}
	return created, nil
}

// movable checks what every move needs: a live pod bound to a node, on GPUs kybernate-scheduler
// assigned.
func movable(pod *v1.Pod) error {
	switch {
	case pod.DeletionTimestamp != nil || pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed:
		return fmt.Errorf("pod %s/%s is finished or being deleted (phase %s)", pod.Namespace, pod.Name, pod.Status.Phase)
	case pod.Spec.NodeName == "":
		return fmt.Errorf("pod %s/%s is not bound to a node yet ('kubectl kybernate why %s' says why)", pod.Namespace, pod.Name, pod.Name)
	}
	if _, ok, err := gpupod.PodGPUs(pod); err != nil {
		return fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	} else if !ok {
		return fmt.Errorf("pod %s/%s has no %s annotation: it was not placed on GPUs by kybernate-scheduler", pod.Namespace, pod.Name, kv1.AnnotationGPUs)
	}
	return nil
}

// podCheckpoints lists the GPUCheckpoints of the pod (this pod, not an earlier one of its name).
func podCheckpoints(ctx context.Context, kyb versioned.Interface, pod *v1.Pod) ([]*kv1.GPUCheckpoint, error) {
	list, err := kyb.KybernateV1alpha1().GPUCheckpoints(pod.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing GPUCheckpoints in %s: %w", pod.Namespace, err)
	}
	var out []*kv1.GPUCheckpoint
	for i := range list.Items {
		ck := &list.Items[i]
		if ck.Spec.PodName == pod.Name && (ck.Spec.PodUID == "" || ck.Spec.PodUID == string(pod.UID)) {
			out = append(out, ck)
		}
	}
	return out, nil
}

func noneInFlight(ctx context.Context, kyb versioned.Interface, pod *v1.Pod) error {
	cks, err := podCheckpoints(ctx, kyb, pod)
	if err != nil {
		return err
	}
	for _, ck := range cks {
		if !ended(ck) {
			return fmt.Errorf("pod %s/%s is being moved already: GPUCheckpoint %s (%s, %s) is %s",
				pod.Namespace, pod.Name, ck.Name, ck.Spec.Action, ck.Spec.Reason, orDash(string(ck.Status.Phase)))
		}
	}
	return nil
}

// lastSuspension is the pod's latest successful Suspend, or nil.
func lastSuspension(ctx context.Context, kyb versioned.Interface, pod *v1.Pod) (*kv1.GPUCheckpoint, error) {
	cks, err := podCheckpoints(ctx, kyb, pod)
	if err != nil {
		return nil, err
	}
	var last *kv1.GPUCheckpoint
	for _, ck := range cks {
		if ck.Spec.Action == kv1.ActionSuspend && ck.Status.Phase == kv1.PhaseSucceeded && (last == nil || startedAt(ck).After(startedAt(last))) {
			last = ck
		}
	}
	return last, nil
}

func startedAt(ck *kv1.GPUCheckpoint) time.Time {
	if ck.Status.StartTime != nil {
		return ck.Status.StartTime.Time
	}
	return ck.CreationTimestamp.Time
}

// resumeTarget picks or checks the GPUs a suspended pod resumes onto, by the scheduler's own
// GPU accounting of its node.
func resumeTarget(ctx context.Context, kube kubernetes.Interface, kyb versioned.Interface, pod *v1.Pod, from, gpus []string) ([]string, error) {
	d, err := gpupod.PodDemand(pod)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	node := pod.Spec.NodeName
	gn, err := kyb.KybernateV1alpha1().GPUNodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading GPUNode %s: %w", node, err)
	}
	list, err := kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String()})
	if err != nil {
		return nil, fmt.Errorf("listing the pods on node %s: %w", node, err)
	}
	onNode := make([]*v1.Pod, 0, len(list.Items))
	for i := range list.Items {
		onNode = append(onNode, &list.Items[i])
	}
	acc := gpupod.NewAccounting(gn, onNode)
	if len(gpus) == 0 {
		if acc.FitsSlotHeld(d, from) {
			return from, nil
		}
		acc.Release(from)
		if target := acc.Choose(d, config.MostAllocated); target != nil {
			return target, nil
		}
		return nil, fmt.Errorf("no room for pod %s/%s on node %s: none of its GPUs has the free memory and slot it needs "+
			"(%s); 'kubectl kybernate gpus %s' shows them", pod.Namespace, pod.Name, node, demandText(d), node)
	}
	for _, u := range gpus {
		if !slices.ContainsFunc(gn.Status.GPUs, func(g kv1.GPUStatus) bool { return g.UUID == u }) {
			return nil, fmt.Errorf("--gpu %s is not a GPU of node %s, where pod %s/%s is", u, node, pod.Namespace, pod.Name)
		}
	}
	if len(gpus) != d.Count {
		return nil, fmt.Errorf("%d --gpu for pod %s/%s, which has %d GPUs (%s): give one per GPU, in order", len(gpus), pod.Namespace, pod.Name, d.Count, strings.Join(from, ","))
	}
	if slices.Equal(gpus, from) {
		if acc.FitsSlotHeld(d, from) {
			return from, nil
		}
	} else {
		acc.Release(from)
		if acc.Fits(d, gpus) {
			return gpus, nil
		}
	}
	return nil, fmt.Errorf("GPUs %s of node %s lack the free memory or slot pod %s/%s needs (%s): resuming there would fail",
		strings.Join(gpus, ","), node, pod.Namespace, pod.Name, demandText(d))
}

func demandText(d gpupod.Demand) string {
	if d.Whole() {
		return fmt.Sprintf("%d whole GPUs", d.Count)
	}
	return fmt.Sprintf("%s on each of %d GPUs", bytes(d.Bytes), d.Count)
}

// checkpointFor builds a GPUCheckpoint for the pod, owned by it (gone with it) and named after
// it and the action.
func checkpointFor(pod *v1.Pod, action string, spec kv1.GPUCheckpointSpec) *kv1.GPUCheckpoint {
	spec.PodName, spec.PodUID = pod.Name, string(pod.UID)
	return &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName:    gpupod.CheckpointPrefix(pod, "-manual-"+action+"-"),
			Namespace:       pod.Namespace,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}},
		},
		Spec: spec,
	}
}

// markPod writes the pod's kybernate.io/gpus and moves its kybernate.io/state from one state to
// another through the state machine; with resourceVersion set only if the pod is unchanged
// since it was read, else only if it is the same pod (UID).
func markPod(ctx context.Context, kube kubernetes.Interface, pod *v1.Pod, resourceVersion string, gpus []string, from, to kv1.PodGPUState) error {
	ann := map[string]string{kv1.AnnotationGPUs: gpupod.FormatGPUs(gpus)}
	if err := gpupod.SetState(ann, from, to); err != nil {
		return err
	}
	meta := map[string]any{"uid": pod.UID, "annotations": ann}
	if resourceVersion != "" {
		meta["resourceVersion"] = resourceVersion
	}
	patch, err := json.Marshal(map[string]any{"metadata": meta})
	if err != nil {
		return err
	}
	_, err = kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}
