package shim

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/shim/spec"
)

// starter is the runc task service for starts: runc restore succeeds, kills are recorded.
type starter struct {
	taskAPI.TaskService
	started []string
	killed  []*taskAPI.KillRequest
	// fail makes runc restore fail.
	fail bool
}

func (s *starter) Start(_ context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	s.started = append(s.started, r.ID)
	if s.fail {
		return nil, errors.New("criu restore failed")
	}
	return &taskAPI.StartResponse{Pid: 42}, nil
}

func (s *starter) Kill(_ context.Context, r *taskAPI.KillRequest) (*ptypes.Empty, error) {
	s.killed = append(s.killed, r)
	return &ptypes.Empty{}, nil
}

// A restore from an image with GPU memory: after runc restore the shim has the agent put the
// memory onto the container's GPUs; when that fails, the container is killed and Start fails
// with an error that says so. The image is never touched (the shim only reads it).
func TestStartRestoresGPUMemory(t *testing.T) {
	req := &agentv1.RestoreRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: "train-2", Uid: "u2"}, ImageDir: "/images/train",
		ContainerId: "c1", TargetGpus: []string{"GPU-2"}}
	tests := []struct {
		name     string
		agentErr error
		slow     bool
		wantErr  string
		wantKill bool
	}{
		{name: "agent restores"},
		{name: "agent fails", agentErr: errors.New("NoProcesses: none of the container's 1 processes"),
			wantErr: "through the agent at /run/test/agent.sock failed: NoProcesses", wantKill: true},
		{name: "agent does not answer in time", slow: true, wantErr: "context deadline exceeded", wantKill: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := &starter{}
			var got *agentv1.RestoreRequest
			var socket string
			agent := func(ctx context.Context, sock string, r *agentv1.RestoreRequest) (*agentv1.RestoreResponse, error) {
				got, socket = r, sock
				if tt.slow {
					<-ctx.Done()
					return nil, ctx.Err()
				}
				if tt.agentErr != nil {
					return nil, tt.agentErr
				}
				return &agentv1.RestoreResponse{Result: &agentv1.Result{Gpus: r.GetTargetGpus()}}, nil
			}
			cfg := spec.Default()
			cfg.AgentSocket = "/run/test/agent.sock"
			cfg.AgentTimeout.Duration = 50 * time.Millisecond
			s := New(in, nil, nil, &fakeAgent{restore: agent})
			s.restores["c1"] = restore{cfg: cfg, gpu: req}
			_, err := s.Start(t.Context(), &taskAPI.StartRequest{ID: "c1"})
			if tt.wantErr == "" && err != nil {
				t.Fatalf("Start: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "the image is kept")) {
				t.Fatalf("Start error %v, want %q and the image kept", err, tt.wantErr)
			}
			if diff := cmp.Diff(req, got, protocmp.Transform()); diff != "" || socket != cfg.AgentSocket {
				t.Errorf("agent request (-want +got):\n%s socket %s", diff, socket)
			}
			if !cmp.Equal([]string{"c1"}, in.started) {
				t.Errorf("started %v, want runc restore of c1 once", in.started)
			}
			if killed := len(in.killed) == 1 && in.killed[0].Signal == uint32(syscall.SIGKILL) && in.killed[0].All; killed != tt.wantKill {
				t.Errorf("kills %v, want killed: %v", in.killed, tt.wantKill)
			}
		})
	}
}

// A GPU image restores only into a container with one GPU per GPU of the image: the device
// nodes and driver libraries come from kybernate.io/gpus.
func TestCreateRefusesGPUImageWithoutGPUs(t *testing.T) {
	root, img := testImage(t, image.Metadata{GPUs: []string{"GPU-7e32cfb4-47ed-64e7-6a8e-af95ec6de6a7"}, VRAMBytes: 1 << 30})
	dir, _ := bundle(t, restoreOf(img))
	in := &inner{}
	s := New(in, configWith(root), nil, nil)
	_, err := s.Create(t.Context(), &taskAPI.CreateTaskRequest{ID: "c1", Bundle: dir})
	if err == nil || !strings.Contains(err.Error(), "the container has 0 gpus") {
		t.Fatalf("Create error %v, want a refusal naming the gpus", err)
	}
	if in.created != nil {
		t.Error("runc was asked to create the container")
	}
}
