package gpupod

import (
	"errors"
	"maps"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// allowed is the state machine of docs/design.md, written out once more: a change to the table
// in state.go must be made here too, on purpose.
var allowed = map[[2]kv1.PodGPUState]bool{
	{kv1.PodRunning, kv1.PodSuspending}:          true,
	{kv1.PodSuspending, kv1.PodSuspending}:       true,
	{kv1.PodSuspending, kv1.PodSuspended}:        true,
	{kv1.PodSuspending, kv1.PodRunning}:          true,
	{kv1.PodSuspended, kv1.PodResuming}:          true,
	{kv1.PodSuspended, kv1.PodCheckpointing}:     true,
	{kv1.PodResuming, kv1.PodResuming}:           true,
	{kv1.PodResuming, kv1.PodRunning}:            true,
	{kv1.PodResuming, kv1.PodSuspended}:          true,
	{kv1.PodCheckpointing, kv1.PodCheckpointing}: true,
	{kv1.PodCheckpointing, kv1.PodCheckpointed}:  true,
	{kv1.PodCheckpointing, kv1.PodSuspended}:     true,
	{kv1.PodCheckpointed, kv1.PodSuspended}:      true,
	{kv1.PodCheckpointed, kv1.PodRestoring}:      true,
	{kv1.PodRestoring, kv1.PodRunning}:           true,
}

// Every pair of states, and a pod without the annotation (Running): the allowed transitions
// write the new state, every other one is refused with a TransitionError and writes nothing.
func TestSetState(t *testing.T) {
	froms := append([]kv1.PodGPUState{""}, States...)
	for _, from := range froms {
		for _, to := range States {
			name := string(from) + "->" + string(to)
			if from == "" {
				name = "(none)->" + string(to)
			}
			t.Run(name, func(t *testing.T) {
				want := allowed[[2]kv1.PodGPUState{normal(from), to}]
				ann := map[string]string{"other": "kept"}
				if from != "" {
					ann[kv1.AnnotationState] = string(from)
				}
				before := maps.Clone(ann)
				err := SetState(ann, from, to)
				if want {
					if err != nil {
						t.Fatalf("SetState(%s -> %s) = %v, want it allowed", from, to, err)
					}
					if got := ann[kv1.AnnotationState]; got != string(to) {
						t.Errorf("state %q after SetState, want %q", got, to)
					}
					return
				}
				var te *TransitionError
				if !errors.As(err, &te) {
					t.Fatalf("SetState(%s -> %s) = %v, want a TransitionError", from, to, err)
				}
				if diff := cmp.Diff(before, ann); diff != "" {
					t.Errorf("a refused transition changed the annotations (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestSetStateUnknown(t *testing.T) {
	ann := map[string]string{}
	err := SetState(ann, "Parked", kv1.PodRunning)
	if err == nil || err.Error() != `annotation kybernate.io/state="Parked" is not a pod GPU state: cannot move it to Running` {
		t.Errorf("SetState from an unknown state: %v", err)
	}
	if len(ann) != 0 {
		t.Errorf("annotations %v after a refused transition", ann)
	}
}

func TestTransitionErrorNamesTheWay(t *testing.T) {
	err := SetState(map[string]string{}, kv1.PodRunning, kv1.PodCheckpointed)
	want := "annotation kybernate.io/state: a pod that is Running cannot become Checkpointed (it may become Suspending)"
	if err == nil || err.Error() != want {
		t.Errorf("error %v, want %q", err, want)
	}
}

func TestProjected(t *testing.T) {
	pod := func(state kv1.PodGPUState) *v1.Pod {
		p := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}}
		if state != "" {
			p.Annotations = map[string]string{kv1.AnnotationState: string(state)}
		}
		return p
	}
	tests := []struct {
		from, to kv1.PodGPUState
		wantErr  bool
	}{
		{from: "", to: kv1.PodSuspended},
		{from: kv1.PodRunning, to: kv1.PodSuspended},
		{from: kv1.PodSuspended, to: kv1.PodRunning},
		{from: kv1.PodRestoring, to: kv1.PodSuspended},
		{from: kv1.PodRunning, to: kv1.PodRunning},
		{from: "Parked", to: kv1.PodSuspended, wantErr: true},
	}
	for _, tt := range tests {
		orig := pod(tt.from)
		got, err := Projected(orig, tt.to)
		if tt.wantErr {
			if err == nil {
				t.Errorf("Projected(%s, %s) succeeded, want an error", tt.from, tt.to)
			}
			continue
		}
		if err != nil {
			t.Fatalf("Projected(%s, %s): %v", tt.from, tt.to, err)
		}
		if s := StateOf(got); s != tt.to {
			t.Errorf("Projected(%s, %s) is %s", tt.from, tt.to, s)
		}
		if s := orig.Annotations[kv1.AnnotationState]; s != string(tt.from) {
			t.Errorf("Projected changed the original's state to %q", s)
		}
	}
}

// Every state can reach every other: a dry run can always project a known state.
func TestStatesConnected(t *testing.T) {
	for _, from := range States {
		for _, to := range States {
			if _, ok := pathTo(from, to); !ok {
				t.Errorf("no path from %s to %s", from, to)
			}
		}
	}
}
