package server

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	testingclock "k8s.io/utils/clock/testing"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda/fake"
	"github.com/kybernate/kybernate/nodeagent/checkpoint"
	"github.com/kybernate/kybernate/nodeagent/controller"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/inventory"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

const gib = int64(1) << 30

var devs = fake.Devices(2, "NVIDIA H100 80GB HBM3", 80<<30)

type finder struct{ d *fake.Driver }

func (f finder) Processes(_ context.Context, pod podmap.PodRef) ([]engine.Process, error) {
	if pod.UID != "uid-train" {
		return nil, nil
	}
	p, _ := f.d.Process(100)
	return []engine.Process{{PID: 100, GPU: p.GPU, Bytes: int64(p.VRAM), State: p.State}}, nil
}

type pids map[int32]podmap.PodRef

func (m pids) PodOfPID(_ context.Context, pid int32) (podmap.PodRef, error) {
	if p, ok := m[pid]; ok {
		return p, nil
	}
	return podmap.PodRef{}, podmap.ErrNotInPod
}

type memory int64

func (m memory) MemAvailable() (int64, error) { return int64(m), nil }

// serve runs a Server for node-a (pod ml/train: pid 100, 30 GiB on the first GPU) on a socket
// in a temporary folder and returns a client, the driver, and the checkpoint folder images are
// restored from.
func serve(t *testing.T, creds PeerCredentials) (agentv1.NodeAgentServiceClient, *fake.Driver, string) {
	t.Helper()
	s, d := newServer(t)
	root := filepath.Join(t.TempDir(), "images")
	s.SetImageRoot(root)
	return serveOn(t, s, filepath.Join(t.TempDir(), "agent.sock"), creds), d, root
}

// newServer is a Server for node-a (pod ml/train: pid 100, 30 GiB on the first GPU) on the
// fake driver it returns.
func newServer(t testing.TB) (*Server, *fake.Driver) {
	t.Helper()
	d := fake.New(devs...)
	if err := errors.Join(d.Init(), d.AddProcess(100, devs[0].UUID, uint64(30*gib))); err != nil {
		t.Fatal(err)
	}
	clk := testingclock.NewFakeClock(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC))
	e := engine.New(d, finder{d}, memory(100*gib), d, d, engine.Config{LockTimeout: time.Second, StepTimeout: time.Minute}, clk)
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "train", UID: "uid-train",
			Annotations: map[string]string{kv1.AnnotationGPUs: devs[0].UUID.String()}},
		Spec:   v1.PodSpec{NodeName: "node-a"},
		Status: v1.PodStatus{Phase: v1.PodRunning},
	}
	kube := kubefake.NewClientset(pod)
	op := controller.NewOperator(kube, controller.EngineMap{"node-a": e}, record.NewFakeRecorder(100), clk, nil)
	inv := &inventory.Static{Inventory: &inventory.Inventory{DriverVersion: "580.95.05", CUDADriverVersion: 13000, GPUs: []inventory.GPU{
		{UUID: devs[0].UUID.String(), Index: 0, Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 * gib, MemoryUsedBytes: 30 * gib,
			Processes: []inventory.Process{{PID: 100, UsedBytes: 30 * gib}}},
	}}}
	nodes := NodeMap{"node-a": {Inventory: inv, Pods: pids{100: {Namespace: "ml", Name: "train", UID: "uid-train"}}, Engine: e, Suspended: e, HostMemory: memory(100 * gib)}}
	return New(nodes, op, APIPods{Client: kube}, 8*gib, true), d
}

// serveOn is the rest of serve: s on sock, and a client.
func serveOn(t *testing.T, s *Server, sock string, creds PeerCredentials) agentv1.NodeAgentServiceClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- serveWith(ctx, sock, s, creds) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewNodeAgentServiceClient(conn)
}

// call waits for the server to be up: the socket appears asynchronously.
func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestSuspendResumeOverTheSocket(t *testing.T) {
	c, d, _ := serve(t, PeerCredentials{})
	ctx := callCtx(t)
	ref := &agentv1.PodRef{Namespace: "ml", Name: "train"}

	inv, err := c.GetInventory(ctx, &agentv1.GetInventoryRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("GetInventory: %v", err)
	}
	want := &agentv1.GetInventoryResponse{
		NodeName: "node-a", DriverVersion: "580.95.05", CudaDriverVersion: 13000, CheckpointCapability: "Remap", Simulated: true,
		ParkableBytes: 92 * gib,
		Gpus: []*agentv1.GPU{{Uuid: devs[0].UUID.String(), Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 * gib, MemoryUsedBytes: 30 * gib,
			Processes: []*agentv1.GPUProcess{{Pid: 100, MemoryUsedBytes: 30 * gib, State: "Running", Pod: &agentv1.PodRef{Namespace: "ml", Name: "train", Uid: "uid-train"}}}}},
	}
	if diff := cmp.Diff(want, inv, protocmp.Transform()); diff != "" {
		t.Errorf("inventory (-want +got):\n%s", diff)
	}

	sres, err := c.Suspend(ctx, &agentv1.SuspendRequest{Pod: ref, LockTimeout: durationpb.New(3 * time.Second)})
	if err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	if sres.GetResult().GetBytes() != 30*gib {
		t.Errorf("suspend moved %d bytes, want %d", sres.GetResult().GetBytes(), 30*gib)
	}
	for _, call := range d.Calls() {
		if call.Name == fake.CallLock && call.Timeout != 3*time.Second {
			t.Errorf("lock timeout %v, want the requested 3s", call.Timeout)
		}
	}
	rres, err := c.Resume(ctx, &agentv1.ResumeRequest{Pod: ref, TargetGpus: []string{devs[1].UUID.String()}})
	if err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if diff := cmp.Diff([]string{devs[1].UUID.String()}, rres.GetResult().GetGpus()); diff != "" {
		t.Errorf("resumed onto (-want +got):\n%s", diff)
	}
}

func TestErrorCodes(t *testing.T) {
	c, d, root := serve(t, PeerCredentials{})
	ctx := callCtx(t)
	train := &agentv1.PodRef{Namespace: "ml", Name: "train"}
	tests := []struct {
		name     string
		call     func() error
		wantCode codes.Code
		wantMsg  string
	}{
		{name: "no pod name", call: func() error { _, err := c.Suspend(ctx, &agentv1.SuspendRequest{}, grpc.WaitForReady(true)); return err },
			wantCode: codes.InvalidArgument, wantMsg: "pod namespace and name are required"},
		{name: "missing pod", call: func() error {
			_, err := c.Suspend(ctx, &agentv1.SuspendRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: "ghost"}})
			return err
		}, wantCode: codes.NotFound, wantMsg: "pod ml/ghost does not exist"},
		{name: "uid mismatch", call: func() error {
			_, err := c.Suspend(ctx, &agentv1.SuspendRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: "train", Uid: "other"}})
			return err
		}, wantCode: codes.FailedPrecondition, wantMsg: "has UID uid-train, not other"},
		{name: "resume a running pod", call: func() error { _, err := c.Resume(ctx, &agentv1.ResumeRequest{Pod: train}); return err },
			wantCode: codes.FailedPrecondition, wantMsg: "pod ml/train is Running"},
		{name: "lock timeout", call: func() error {
			_ = d.SetBusy(100, true)
			defer func() { _ = d.SetBusy(100, false) }()
			_, err := c.Suspend(ctx, &agentv1.SuspendRequest{Pod: train})
			return err
		}, wantCode: codes.DeadlineExceeded, wantMsg: "LockTimeout"},
		{name: "checkpoint without pod", call: func() error { _, err := c.Checkpoint(ctx, &agentv1.CheckpointRequest{}); return err },
			wantCode: codes.InvalidArgument, wantMsg: "pod namespace and name are required"},
		{name: "checkpoint without image dir", call: func() error { _, err := c.Checkpoint(ctx, &agentv1.CheckpointRequest{Pod: train}); return err },
			wantCode: codes.InvalidArgument, wantMsg: "image_dir is required"},
		{name: "checkpoint without containerd", call: func() error {
			_, err := c.Checkpoint(ctx, &agentv1.CheckpointRequest{Pod: train, ImageDir: "/var/lib/kybernate/images/x"})
			return err
		}, wantCode: codes.Unimplemented, wantMsg: "node node-a cannot write checkpoint images"},
		{name: "restore without image dir", call: func() error { _, err := c.Restore(ctx, &agentv1.RestoreRequest{}); return err },
			wantCode: codes.InvalidArgument, wantMsg: "image_dir is required"},
		{name: "restore from a missing image", call: func() error {
			_, err := c.Restore(ctx, &agentv1.RestoreRequest{Pod: train, ImageDir: filepath.Join(root, "ml", "gone")})
			return err
		}, wantCode: codes.NotFound, wantMsg: "no such folder"},
		{name: "restore of gpu memory", call: func() error {
			_, err := c.Restore(ctx, &agentv1.RestoreRequest{Pod: train, ImageDir: writeImage(t, root, []string{devs[0].UUID.String()})})
			return err
		}, wantCode: codes.Unimplemented, wantMsg: "node node-a cannot write checkpoint images"},
		{name: "restore from outside the checkpoint folder", call: func() error {
			_, err := c.Restore(ctx, &agentv1.RestoreRequest{Pod: train, ImageDir: t.TempDir()})
			return err
		}, wantCode: codes.PermissionDenied, wantMsg: image.RefusedOutside},
		{name: "restore from another namespace's image", call: func() error {
			dir := writeImage(t, root, nil)
			_, err := c.Restore(ctx, &agentv1.RestoreRequest{Pod: &agentv1.PodRef{Namespace: "other", Name: "x"}, ImageDir: dir})
			return err
		}, wantCode: codes.PermissionDenied, wantMsg: image.RefusedOtherNamespace},
		{name: "restore through dot dot", call: func() error {
			dir := writeImage(t, root, nil)
			_, err := c.Restore(ctx, &agentv1.RestoreRequest{Pod: train, ImageDir: root + "/ml/../ml/" + filepath.Base(dir)})
			return err
		}, wantCode: codes.InvalidArgument, wantMsg: image.RefusedInvalidPath},
		{name: "restore through a symbolic link", call: func() error {
			dir := writeImage(t, root, nil)
			link := filepath.Join(root, "ml", "link")
			if err := os.Symlink(dir, link); err != nil {
				t.Fatal(err)
			}
			_, err := c.Restore(ctx, &agentv1.RestoreRequest{Pod: train, ImageDir: link})
			return err
		}, wantCode: codes.PermissionDenied, wantMsg: image.RefusedSymlink},
		{name: "restore without a pod namespace", call: func() error {
			_, err := c.Restore(ctx, &agentv1.RestoreRequest{ImageDir: writeImage(t, root, nil)})
			return err
		}, wantCode: codes.InvalidArgument, wantMsg: image.RefusedInvalidPath},
		{name: "two nodes named in metadata, one unknown", call: func() error {
			_, err := c.GetInventory(metadata.AppendToOutgoingContext(ctx, NodeMetadataKey, "node-z"), &agentv1.GetInventoryRequest{})
			return err
		}, wantCode: codes.NotFound, wantMsg: `this agent does not serve node "node-z"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if got := status.Code(err); got != tt.wantCode || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %v (%s), want %s containing %q", err, got, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

// A container without GPUs restored by the shim has nothing for the agent to put back.
func TestRestoreWithoutGPUs(t *testing.T) {
	c, _, root := serve(t, PeerCredentials{})
	resp, err := c.Restore(callCtx(t), &agentv1.RestoreRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: "train"}, ImageDir: writeImage(t, root, nil), ContainerId: "c1"}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&agentv1.RestoreResponse{Result: &agentv1.Result{}}, resp, protocmp.Transform()); diff != "" {
		t.Errorf("response (-want +got):\n%s", diff)
	}
}

// writeImage writes a checkpoint image of namespace ml under root with one CRIU file.
func writeImage(t *testing.T, root string, gpus []string) string {
	t.Helper()
	ns, err := image.NamespaceDir(root, "ml")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(ns, "train-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "inventory.img"), []byte("criu"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := image.Write(dir, image.Metadata{Container: image.Container{ID: "c0"}, GPUs: gpus}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestPeerNotAllowed(t *testing.T) {
	// Nobody's UID is 4242: the handshake refuses this test process.
	c, _, _ := serve(t, PeerCredentials{Allowed: []uint32{4242}})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err := c.GetInventory(ctx, &agentv1.GetInventoryRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("GetInventory error %v, want Unavailable (connection refused by the handshake)", err)
	}
}

func TestNodeMap(t *testing.T) {
	m := NodeMap{"b": {}, "a": {}}
	if diff := cmp.Diff([]string{"a", "b"}, m.Names()); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
}

func TestRestoreStatus(t *testing.T) {
	gpuErr := func(c engine.Cause) error {
		return &checkpoint.Error{Cause: checkpoint.CauseGPU, Restore: true, Err: &engine.Error{Op: "restore", Cause: c, Err: errors.New("x")}}
	}
	tests := []struct {
		err  error
		want codes.Code
	}{
		{&checkpoint.Error{Cause: checkpoint.CauseInvalid, Restore: true, Err: errors.New("x")}, codes.InvalidArgument},
		{&checkpoint.Error{Cause: checkpoint.CauseNotFound, Restore: true, Err: errors.New("x")}, codes.NotFound},
		{&checkpoint.Error{Cause: checkpoint.CauseImage, Restore: true, Err: errors.New("x")}, codes.FailedPrecondition},
		{&checkpoint.Error{Cause: checkpoint.CauseUnsupported, Restore: true, Err: errors.New("x")}, codes.FailedPrecondition},
		{gpuErr(engine.CauseNoProcesses), codes.FailedPrecondition},
		{gpuErr(engine.CauseInvalidTarget), codes.InvalidArgument},
		{gpuErr(engine.CauseStepTimeout), codes.DeadlineExceeded},
		{gpuErr(engine.CauseRestoreFailed), codes.Aborted},
		{gpuErr(engine.CauseInsufficientGPUMemory), codes.ResourceExhausted},
		{gpuErr(engine.CauseGPUStateLost), codes.DataLoss},
		{errors.New("other"), codes.Internal},
	}
	for _, tt := range tests {
		if got := status.Code(restoreStatus(tt.err)); got != tt.want {
			t.Errorf("restoreStatus(%v) = %s, want %s", tt.err, got, tt.want)
		}
	}
}

func TestToStatus(t *testing.T) {
	tests := []struct {
		cause engine.Cause
		want  codes.Code
	}{
		{engine.CauseInsufficientGPUMemory, codes.ResourceExhausted},
		{engine.CauseHostMemoryExhausted, codes.ResourceExhausted},
		{engine.CauseGPUStateLost, codes.DataLoss},
		{engine.CauseBusy, codes.Aborted},
		{engine.CauseWrongState, codes.FailedPrecondition},
	}
	for _, tt := range tests {
		err := &engine.Error{Op: "resume", Pod: "ml/train", Cause: tt.cause, Err: errors.New("x")}
		if got := status.Code(toStatus(err)); got != tt.want {
			t.Errorf("toStatus(%s) = %s, want %s", tt.cause, got, tt.want)
		}
	}
}
