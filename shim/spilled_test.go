package shim

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/image"
)

// fakeAgent is the node agent's API; it records the spilled-image calls.
type fakeAgent struct {
	restore func(ctx context.Context, socket string, req *agentv1.RestoreRequest) (*agentv1.RestoreResponse, error)
	// fetchDir is FetchSpilled's answer, fetchErr its error.
	fetchDir string
	fetchErr error
	fetched  []*agentv1.FetchSpilledRequest
	released []*agentv1.ReleaseSpilledRequest
}

func (f *fakeAgent) Restore(ctx context.Context, socket string, req *agentv1.RestoreRequest) (*agentv1.RestoreResponse, error) {
	return f.restore(ctx, socket, req)
}

func (f *fakeAgent) FetchSpilled(_ context.Context, _ string, req *agentv1.FetchSpilledRequest) (*agentv1.FetchSpilledResponse, error) {
	f.fetched = append(f.fetched, req)
	if f.fetchErr != nil {
		return nil, f.fetchErr
	}
	return &agentv1.FetchSpilledResponse{ImageDir: f.fetchDir, Tier: "ObjectStore"}, nil
}

func (f *fakeAgent) ReleaseSpilled(_ context.Context, _ string, req *agentv1.ReleaseSpilledRequest) error {
	f.released = append(f.released, req)
	return nil
}

// podContainer are the CRI plugin's annotations of container trainer of pod ml/train (uid u1)
// with a kybernate.io/ annotation of its pod.
func podContainer() map[string]string {
	return map[string]string{criSandboxNamespace: "ml", criSandboxName: "train", criSandboxUID: "u1", criContainerName: "trainer",
		"io.kubernetes.cri.container-type": "container", kv1.AnnotationSleep: "Disk"}
}

var trainer = &agentv1.PodRef{Namespace: "ml", Name: "train", Uid: "u1", Container: "trainer"}

// A container of a Kybernate pod whose agent has a spilled image of it is restored from that
// image, and the image is released after the start: deleted when the restore ran, kept when it
// failed.
func TestCreateRestoresSpilledImage(t *testing.T) {
	for _, startFails := range []bool{false, true} {
		root, img := testImage(t, image.Metadata{Pod: image.Pod{Namespace: "ml", Name: "train", UID: "u1"}, Container: image.Container{Name: "trainer", ID: "c0"}})
		dir, _ := bundle(t, podContainer())
		in := &starter{}
		agent := &fakeAgent{fetchDir: img}
		s := New(&creator{starter: in}, configWith(root), nil, agent)
		if _, err := s.Create(t.Context(), &taskAPI.CreateTaskRequest{ID: "c1", Bundle: dir}); err != nil {
			t.Fatal(err)
		}
		want := []*agentv1.FetchSpilledRequest{{Pod: trainer, ContainerId: "c1"}}
		if diff := cmp.Diff(want, agent.fetched, protocmp.Transform()); diff != "" {
			t.Errorf("FetchSpilled (-want +got):\n%s", diff)
		}
		if got := s.restores["c1"]; got.spilled == nil {
			t.Fatalf("container not created for a restore from the spilled image: %+v", got)
		}
		if len(agent.released) != 0 {
			t.Fatalf("released before the start: %v", agent.released)
		}
		in.fail = startFails
		_, err := s.Start(t.Context(), &taskAPI.StartRequest{ID: "c1"})
		if (err != nil) != startFails {
			t.Fatalf("Start: %v, want failure %v", err, startFails)
		}
		wantRel := []*agentv1.ReleaseSpilledRequest{{Pod: trainer, ImageDir: img, Restored: !startFails}}
		if diff := cmp.Diff(wantRel, agent.released, protocmp.Transform()); diff != "" {
			t.Errorf("start fails %v: ReleaseSpilled (-want +got):\n%s", startFails, diff)
		}
	}
}

// creator is the runc task service of a create followed by a start.
type creator struct {
	*starter
	created *taskAPI.CreateTaskRequest
}

func (c *creator) Create(_ context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	c.created = r
	return &taskAPI.CreateTaskResponse{Pid: 42}, nil
}

func TestCreateSpilledCases(t *testing.T) {
	tests := []struct {
		name        string
		annotations map[string]string
		agent       *fakeAgent
		// wantAsked: the agent was asked; wantRestore: the create became a restore.
		wantAsked, wantRestore bool
		wantErr                string
		// wantReleased: the fetched image was released (not restored).
		wantReleased bool
	}{
		{name: "no spilled image: created as any container, spec untouched", annotations: podContainer(), agent: &fakeAgent{}, wantAsked: true},
		{name: "agent unreachable: not created", annotations: podContainer(), agent: &fakeAgent{fetchErr: errors.New("connection refused")}, wantAsked: true,
			wantErr: "asking the node agent at /run/kybernate/agent.sock whether pod ml/train has a spilled image of container trainer: connection refused; the container is not created"},
		{name: "image of another namespace: refused and released", annotations: podContainer(), agent: &fakeAgent{fetchDir: "/elsewhere/other/img"}, wantAsked: true,
			wantErr: "OutsideCheckpointDir", wantReleased: true},
		{name: "pod without kybernate.io/ annotations: not asked", annotations: func() map[string]string {
			a := podContainer()
			delete(a, kv1.AnnotationSleep)
			return a
		}(), agent: &fakeAgent{fetchErr: errors.New("must not be asked")}},
		{name: "sandbox: not asked", annotations: func() map[string]string {
			a := podContainer()
			a["io.kubernetes.cri.container-type"] = "sandbox"
			return a
		}(), agent: &fakeAgent{fetchErr: errors.New("must not be asked")}},
		{name: "no pod uid: not asked", annotations: func() map[string]string {
			a := podContainer()
			delete(a, criSandboxUID)
			return a
		}(), agent: &fakeAgent{fetchErr: errors.New("must not be asked")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "images")
			dir, data := bundle(t, tt.annotations)
			in := &inner{}
			s := New(in, configWith(root), nil, tt.agent)
			_, err := s.Create(t.Context(), &taskAPI.CreateTaskRequest{ID: "c1", Bundle: dir})
			if tt.wantErr == "" && err != nil {
				t.Fatal(err)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Create error %v, want %q", err, tt.wantErr)
				}
				if in.created != nil {
					t.Error("runc was asked to create the container")
				}
			}
			if asked := len(tt.agent.fetched) > 0; asked != tt.wantAsked {
				t.Errorf("agent asked %v, want %v", asked, tt.wantAsked)
			}
			if _, restore := s.restores["c1"]; restore != tt.wantRestore {
				t.Errorf("restore %v, want %v", restore, tt.wantRestore)
			}
			if released := len(tt.agent.released) == 1 && !tt.agent.released[0].GetRestored(); released != tt.wantReleased {
				t.Errorf("released %v, want %v", tt.agent.released, tt.wantReleased)
			}
			if err == nil {
				if got, _ := os.ReadFile(filepath.Join(dir, "config.json")); string(got) != string(data) {
					t.Errorf("config.json rewritten:\n%s", got)
				}
			}
		})
	}
}

// The shim hashes the files of an image named by kybernate.io/restore-from before runc reads
// them; the folder FetchSpilled hands over was decrypted and checked against the tier's
// manifest by the agent moments ago, so only its files' presence and sizes are checked.
func TestCreateHashesImagesTheAgentDidNotFetch(t *testing.T) {
	meta := image.Metadata{Pod: image.Pod{Namespace: "ml", Name: "train", UID: "u1"}, Container: image.Container{Name: "trainer", ID: "c0"}}
	for _, tc := range []struct {
		name    string
		damage  string // inventory.img's new content ("criu" at first)
		fetched bool
		wantErr string
	}{
		{name: "restore-from, a byte changed", damage: "CRIU", wantErr: "inventory.img has sha256"},
		{name: "spilled, a byte changed", damage: "CRIU", fetched: true},
		{name: "spilled, a file cut short", damage: "cri", fetched: true, wantErr: "inventory.img has 3 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, img := testImage(t, meta)
			if err := os.WriteFile(filepath.Join(img, "inventory.img"), []byte(tc.damage), 0o600); err != nil {
				t.Fatal(err)
			}
			annotations, agent := restoreOf(img), Agent(nil)
			if tc.fetched {
				annotations, agent = podContainer(), &fakeAgent{fetchDir: img}
			}
			dir, _ := bundle(t, annotations)
			in := &creator{starter: &starter{}}
			_, err := New(in, configWith(root), nil, agent).Create(t.Context(), &taskAPI.CreateTaskRequest{ID: "c1", Bundle: dir})
			switch {
			case tc.wantErr == "" && (err != nil || in.created == nil || in.created.Checkpoint != img):
				t.Fatalf("Create: %v; want a restore from %s", err, img)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || in.created != nil):
				t.Fatalf("Create: %v; want a refusal containing %q and no container", err, tc.wantErr)
			}
		})
	}
}
