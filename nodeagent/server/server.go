// Package server is the agent's gRPC API (apis/agent/v1 NodeAgentService) on a unix socket
// (mode 0600) that serves root peers (and the agent's own user) only: GetInventory, Suspend,
// Resume, Checkpoint and Spill for the kybernate CLI, tests and the migration; Restore,
// FetchSpilled and ReleaseSpilled for the containerd shim (GPU memory of a container restored
// from an image onto this node's GPUs; a spilled container's image brought back for its
// restore). Errors become gRPC status codes here and nowhere else.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/checkpoint"
	"github.com/kybernate/kybernate/nodeagent/controller"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/inventory"
	agentstatus "github.com/kybernate/kybernate/nodeagent/status"
	"github.com/kybernate/kybernate/nodeagent/tier"
)

// NodeMetadataKey is the gRPC metadata key that picks the node for GetInventory on an agent
// that serves several (--simulate).
const NodeMetadataKey = "kybernate-node"

// Node is what the server reads about one node.
type Node struct {
	Inventory  inventory.Source
	Pods       agentstatus.PodResolver
	Engine     *engine.Engine
	Suspended  agentstatus.SuspendedLister
	HostMemory agentstatus.HostMemory
	// Checkpoints writes checkpoint images; nil where the agent cannot (no containerd,
	// simulated nodes).
	Checkpoints *checkpoint.Checkpointer
	// Tiers moves containers' checkpoint images between the storage tiers; nil without a disk
	// tier (--disk-tier-dir) or on simulated nodes.
	Tiers *tier.Containers
}

// Nodes are the nodes the agent serves.
type Nodes interface {
	Node(name string) (Node, bool)
	Names() []string
}

// PodGetter finds pods; nil and no error when there is none.
type PodGetter interface {
	Pod(ctx context.Context, namespace, name string) (*v1.Pod, error)
}

// APIPods is a PodGetter on the API: requests act on the pod as it is now, not as a cache
// last saw it.
type APIPods struct {
	Client kubernetes.Interface
}

// Pod gets the pod from the API.
func (p APIPods) Pod(ctx context.Context, namespace, name string) (*v1.Pod, error) {
	pod, err := p.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return pod, err
}

// Server implements agentv1.NodeAgentServiceServer.
type Server struct {
	agentv1.UnimplementedNodeAgentServiceServer
	nodes     Nodes
	op        *controller.Operator
	pods      PodGetter
	reserve   int64
	simulated bool
	// imageRoot is the checkpoint folder (--checkpoint-dir) images are restored from.
	imageRoot string
}

// SetImageRoot sets the checkpoint folder: Restore accepts only images of the pod's namespace
// under it (image.ResolveRestore). Without one every Restore is refused.
func (s *Server) SetImageRoot(root string) { s.imageRoot = root }

var _ agentv1.NodeAgentServiceServer = (*Server)(nil)

// New returns a Server. reserve is the host memory reserve parkable bytes are counted
// without.
func New(nodes Nodes, op *controller.Operator, pods PodGetter, reserve int64, simulated bool) *Server {
	return &Server{nodes: nodes, op: op, pods: pods, reserve: reserve, simulated: simulated}
}

// GetInventory reports the node's GPUs and the GPU processes on them.
func (s *Server) GetInventory(ctx context.Context, _ *agentv1.GetInventoryRequest) (*agentv1.GetInventoryResponse, error) {
	name, err := s.node(ctx)
	if err != nil {
		return nil, err
	}
	n, ok := s.nodes.Node(name)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "this agent does not serve node %q", name)
	}
	inv, err := n.Inventory.Read(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "reading gpu inventory: %v", err)
	}
	resp := &agentv1.GetInventoryResponse{
		NodeName:             name,
		DriverVersion:        inv.DriverVersion,
		CudaDriverVersion:    inv.CUDADriverVersion,
		CheckpointCapability: string(agentstatus.Capability(inv.CUDADriverVersion)),
		Simulated:            s.simulated,
	}
	for _, g := range inv.GPUs {
		out := &agentv1.GPU{Uuid: g.UUID, Index: g.Index, Model: g.Model, MemoryTotalBytes: g.MemoryTotalBytes, MemoryUsedBytes: g.MemoryUsedBytes}
		for _, p := range g.Processes {
			gp := &agentv1.GPUProcess{Pid: p.PID, MemoryUsedBytes: p.UsedBytes}
			if n.Pods != nil {
				if ref, err := n.Pods.PodOfPID(ctx, p.PID); err == nil {
					gp.Pod = &agentv1.PodRef{Namespace: ref.Namespace, Name: ref.Name, Uid: string(ref.UID)}
				}
			}
			if n.Engine != nil {
				if st, err := n.Engine.ProcessState(int(p.PID)); err == nil {
					gp.State = processState(st.String())
				}
			}
			out.Processes = append(out.Processes, gp)
		}
		resp.Gpus = append(resp.Gpus, out)
	}
	if n.Suspended != nil {
		for _, p := range n.Suspended.SuspendedPods() {
			if p.Residency == kv1.Suspended {
				resp.ParkedBytes += p.Bytes
			}
		}
	}
	if n.HostMemory != nil {
		if avail, err := n.HostMemory.MemAvailable(); err == nil {
			resp.ParkableBytes = max(avail-s.reserve, 0)
		}
	}
	return resp, nil
}

// processState renders the driver's RUNNING as the API's Running.
func processState(s string) string {
	if s == "" {
		return s
	}
	b := []byte(s)
	for i := 1; i < len(b); i++ {
		if b[i] >= 'A' && b[i] <= 'Z' {
			b[i] += 'a' - 'A'
		}
	}
	return string(b)
}

// node picks the node a request is about: the only one, or the one in the metadata.
func (s *Server) node(ctx context.Context) (string, error) {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(NodeMetadataKey); len(v) > 0 {
			return v[0], nil
		}
	}
	names := s.nodes.Names()
	switch len(names) {
	case 1:
		return names[0], nil
	case 0:
		return "", status.Error(codes.Unavailable, "this agent serves no node yet")
	}
	sort.Strings(names)
	return "", status.Errorf(codes.InvalidArgument, "this agent serves %d nodes (%v): name one in the gRPC metadata %q", len(names), names, NodeMetadataKey)
}

// pod finds and checks the pod a request names.
func (s *Server) pod(ctx context.Context, ref *agentv1.PodRef) (*v1.Pod, error) {
	if ref == nil || ref.GetNamespace() == "" || ref.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "pod namespace and name are required")
	}
	if ref.GetContainer() != "" {
		return nil, status.Errorf(codes.InvalidArgument, "container %q: suspending single containers is not supported; the pod moves as one", ref.GetContainer())
	}
	pod, err := s.pods.Pod(ctx, ref.GetNamespace(), ref.GetName())
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "getting pod %s/%s: %v", ref.GetNamespace(), ref.GetName(), err)
	}
	if pod == nil {
		return nil, status.Errorf(codes.NotFound, "pod %s/%s does not exist", ref.GetNamespace(), ref.GetName())
	}
	if ref.GetUid() != "" && types.UID(ref.GetUid()) != pod.UID {
		return nil, status.Errorf(codes.FailedPrecondition, "pod %s/%s has UID %s, not %s", pod.Namespace, pod.Name, pod.UID, ref.GetUid())
	}
	return pod, nil
}

// Suspend moves a pod's GPU memory to host memory.
func (s *Server) Suspend(ctx context.Context, req *agentv1.SuspendRequest) (*agentv1.SuspendResponse, error) {
	pod, err := s.pod(ctx, req.GetPod())
	if err != nil {
		return nil, err
	}
	var lockTimeout time.Duration
	if d := req.GetLockTimeout(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "lock_timeout: want a positive duration")
		}
		lockTimeout = d.AsDuration()
	}
	logRequest(ctx, "Suspend", pod)
	res, err := s.op.Suspend(ctx, pod, lockTimeout)
	if err != nil && !errors.Is(err, controller.ErrNotRecorded) {
		return nil, toStatus(err)
	}
	return &agentv1.SuspendResponse{Result: result(res)}, nil
}

// Resume puts a suspended pod's GPU memory back.
func (s *Server) Resume(ctx context.Context, req *agentv1.ResumeRequest) (*agentv1.ResumeResponse, error) {
	pod, err := s.pod(ctx, req.GetPod())
	if err != nil {
		return nil, err
	}
	logRequest(ctx, "Resume", pod)
	res, err := s.op.Resume(ctx, pod, req.GetTargetGpus())
	if err != nil && !errors.Is(err, controller.ErrNotRecorded) {
		return nil, toStatus(err)
	}
	return &agentv1.ResumeResponse{Result: result(res)}, nil
}

// Checkpoint writes a container of a pod to a checkpoint image (CRIU through containerd and the
// shim, after the CUDA checkpoint when the container holds GPUs). Failures are rolled back.
func (s *Server) Checkpoint(ctx context.Context, req *agentv1.CheckpointRequest) (*agentv1.CheckpointResponse, error) {
	ref := req.GetPod()
	if ref.GetNamespace() == "" || ref.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "pod namespace and name are required")
	}
	if req.GetImageDir() == "" {
		return nil, status.Error(codes.InvalidArgument, "image_dir is required")
	}
	var lockTimeout time.Duration
	if d := req.GetLockTimeout(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "lock_timeout: want a positive duration")
		}
		lockTimeout = d.AsDuration()
	}
	n, err := s.checkpointNode(ctx)
	if err != nil {
		return nil, err
	}
	klog.FromContext(ctx).V(2).Info("gRPC request", "method", "Checkpoint", "pod", klog.KRef(ref.GetNamespace(), ref.GetName()), "container", ref.GetContainer(), "imageDir", req.GetImageDir())
	res, err := n.Checkpoints.Checkpoint(ctx, checkpoint.Request{
		Pod:          image.Pod{Namespace: ref.GetNamespace(), Name: ref.GetName(), UID: ref.GetUid()},
		Container:    ref.GetContainer(),
		ImageDir:     req.GetImageDir(),
		LeaveRunning: req.GetLeaveRunning(),
		LockTimeout:  lockTimeout,
	})
	if err != nil {
		return nil, checkpointStatus(err)
	}
	out := result(engine.Result{Bytes: res.Metadata.VRAMBytes, Steps: res.Steps})
	return &agentv1.CheckpointResponse{Result: out, ImageDir: req.GetImageDir(), Created: timestamppb.New(res.Metadata.Created)}, nil
}

// Restore puts the GPU memory of a container the shim restored from an image onto GPUs of
// this node (the shim calls it between runc restore and letting the task run). Images
// without GPUs have nothing to put back: the image is checked and the call succeeds. On
// failure nothing is deleted and the caller stops the container.
func (s *Server) Restore(ctx context.Context, req *agentv1.RestoreRequest) (*agentv1.RestoreResponse, error) {
	if req.GetImageDir() == "" {
		return nil, status.Error(codes.InvalidArgument, "image_dir is required")
	}
	ref := req.GetPod()
	klog.FromContext(ctx).V(2).Info("gRPC request", "method", "Restore", "imageDir", req.GetImageDir(), "containerID", req.GetContainerId(),
		"pod", klog.KRef(ref.GetNamespace(), ref.GetName()), "targetGPUs", req.GetTargetGpus())
	if _, err := image.ResolveRestore(s.imageRoot, ref.GetNamespace(), req.GetImageDir()); err != nil {
		return nil, refusedStatus(err)
	}
	// The shim verified the image before its runc restore read it (or the agent did, as it
	// decrypted a spilled image): only the metadata is used from here on.
	m, err := image.Check(req.GetImageDir())
	switch {
	case errors.Is(err, image.ErrMissing):
		return nil, status.Error(codes.NotFound, err.Error())
	case err != nil:
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	case len(m.GPUs) == 0:
		return &agentv1.RestoreResponse{Result: &agentv1.Result{}}, nil
	}
	n, err := s.checkpointNode(ctx)
	if err != nil {
		return nil, err
	}
	res, err := n.Checkpoints.Restore(ctx, checkpoint.RestoreRequest{
		ImageDir:    req.GetImageDir(),
		ContainerID: req.GetContainerId(),
		Pod:         image.Pod{Namespace: ref.GetNamespace(), Name: ref.GetName(), UID: ref.GetUid()},
		TargetGPUs:  req.GetTargetGpus(),
	})
	if err != nil {
		return nil, restoreStatus(err)
	}
	return &agentv1.RestoreResponse{Result: result(res.Result)}, nil
}

// refusedStatus converts the errors of image.ResolveRestore to gRPC codes.
func refusedStatus(err error) error {
	var re *image.RefusedError
	switch {
	case errors.Is(err, image.ErrMissing):
		return status.Error(codes.NotFound, err.Error())
	case !errors.As(err, &re):
		return status.Error(codes.Internal, err.Error())
	case re.Reason == image.RefusedInvalidPath:
		return status.Error(codes.InvalidArgument, err.Error())
	case re.Reason == image.RefusedNoCheckpointDir:
		return status.Error(codes.FailedPrecondition, err.Error())
	default:
		return status.Error(codes.PermissionDenied, err.Error())
	}
}

// restoreStatus converts restore errors to gRPC codes.
func restoreStatus(err error) error {
	code := codes.Internal
	switch checkpoint.CauseOf(err) {
	case checkpoint.CauseInvalid:
		code = codes.InvalidArgument
	case checkpoint.CauseNotFound:
		code = codes.NotFound
	case checkpoint.CauseUnsupported, checkpoint.CauseImage:
		code = codes.FailedPrecondition
	case checkpoint.CauseTimeout:
		code = codes.DeadlineExceeded
	case checkpoint.CauseGPU:
		switch engine.CauseOf(err) {
		case engine.CauseStepTimeout:
			code = codes.DeadlineExceeded
		case engine.CauseInvalidTarget:
			code = codes.InvalidArgument
		case engine.CauseUnsupported, engine.CauseNoProcesses:
			code = codes.FailedPrecondition
		case engine.CauseInsufficientGPUMemory:
			code = codes.ResourceExhausted // nothing was tried: retry once memory is free
		case engine.CauseGPUStateLost:
			code = codes.DataLoss
		default: // the driver refused, or another operation on the pod runs
			code = codes.Aborted
		}
	}
	return status.Error(code, err.Error())
}

// checkpointNode is the node a checkpoint runs on: the agent's own (checkpoints need its
// containerd).
func (s *Server) checkpointNode(ctx context.Context) (Node, error) {
	name, err := s.node(ctx)
	if err != nil {
		return Node{}, err
	}
	n, ok := s.nodes.Node(name)
	if !ok {
		return Node{}, status.Errorf(codes.NotFound, "this agent does not serve node %q", name)
	}
	if n.Checkpoints == nil {
		return Node{}, status.Errorf(codes.Unimplemented, "node %s cannot write checkpoint images: the agent runs without containerd (--containerd-socket) or simulates the node", name)
	}
	return n, nil
}

// checkpointStatus converts checkpoint errors to gRPC codes.
func checkpointStatus(err error) error {
	code := codes.Internal
	switch checkpoint.CauseOf(err) {
	case checkpoint.CauseInvalid:
		code = codes.InvalidArgument
	case checkpoint.CauseExists:
		code = codes.AlreadyExists
	case checkpoint.CauseNotFound:
		code = codes.NotFound
	case checkpoint.CauseUnsupported, checkpoint.CauseImageDir:
		code = codes.FailedPrecondition
	case checkpoint.CauseTimeout:
		code = codes.DeadlineExceeded
	case checkpoint.CauseGPU:
		if c := engine.CauseOf(err); c == engine.CauseLockTimeout || c == engine.CauseStepTimeout {
			code = codes.DeadlineExceeded
		} else {
			code = codes.Aborted
		}
	case checkpoint.CauseDump:
		code = codes.Aborted
	case checkpoint.CauseDiskFull:
		code = codes.ResourceExhausted
	}
	return status.Error(code, err.Error())
}

func logRequest(ctx context.Context, method string, pod *v1.Pod) {
	logger := klog.FromContext(ctx)
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(PeerInfo); ok {
			logger = logger.WithValues("peerPID", info.PID, "peerUID", info.UID)
		}
	}
	logger.V(2).Info("gRPC request", "method", method, "pod", klog.KObj(pod))
}

func result(r engine.Result) *agentv1.Result {
	out := &agentv1.Result{Bytes: r.Bytes}
	for _, s := range r.Steps {
		out.Steps = append(out.Steps, &agentv1.Step{Name: s.Name, Duration: durationpb.New(s.Duration), Bytes: s.Bytes})
	}
	for _, g := range r.GPUs {
		out.Gpus = append(out.Gpus, g.String())
	}
	return out
}

// toStatus converts the errors of Suspend and Resume (the operator's and the engine's) to gRPC
// codes; checkpointStatus and restoreStatus do it for the image operations.
func toStatus(err error) error {
	var inv *controller.InvalidError
	if errors.As(err, &inv) {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	if errors.Is(err, controller.ErrNotServed) {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	code := codes.Internal
	switch engine.CauseOf(err) {
	case engine.CauseBusy:
		code = codes.Aborted
	case engine.CauseWrongState, engine.CauseNoProcesses, engine.CauseUnsupported:
		code = codes.FailedPrecondition
	case engine.CauseInvalidTarget:
		code = codes.InvalidArgument
	case engine.CauseHostMemoryExhausted, engine.CauseInsufficientGPUMemory:
		code = codes.ResourceExhausted
	case engine.CauseGPUStateLost:
		code = codes.DataLoss
	case engine.CauseLockTimeout, engine.CauseStepTimeout:
		code = codes.DeadlineExceeded
	case engine.CauseInternal:
		var e *engine.Error
		if !errors.As(err, &e) {
			code = codes.Unavailable // the API server, most likely
		}
	}
	return status.Error(code, err.Error())
}

// Serve serves s on the unix socket at path until ctx ends. A stale socket file is replaced.
func Serve(ctx context.Context, path string, s *Server) error {
	return serveWith(ctx, path, s, PeerCredentials{})
}

func serveWith(ctx context.Context, path string, s *Server, creds PeerCredentials) error {
	logger := klog.FromContext(ctx)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("restricting socket %s: %w", path, err)
	}
	srv := grpc.NewServer(grpc.Creds(creds), grpc.ChainUnaryInterceptor(loggingInterceptor(logger)))
	agentv1.RegisterNodeAgentServiceServer(srv, s)
	logger.Info("Serving the agent API", "socket", path)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			srv.Stop()
		}
	}()
	err = srv.Serve(ln)
	<-stopped
	_ = os.Remove(path)
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serving the agent api: %w", err)
	}
	return nil
}

// loggingInterceptor gives handlers the agent's logger.
func loggingInterceptor(logger klog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(klog.NewContext(ctx, logger.WithValues("method", info.FullMethod)), req)
		if err != nil {
			logger.V(2).Info("gRPC request failed", "method", info.FullMethod, "code", status.Code(err), "err", err)
		}
		return resp, err
	}
}

// NodeMap is Nodes over a fixed map: one node, or tests.
type NodeMap map[string]Node

// Node returns the node called name.
func (m NodeMap) Node(name string) (Node, bool) {
	n, ok := m[name]
	return n, ok
}

// Names returns the nodes' names, sorted.
func (m NodeMap) Names() []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
