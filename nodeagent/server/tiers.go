package server

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/checkpoint"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/tier"
)

// Spill moves a container's checkpoint image down the storage tiers (package tier,
// Containers.Spill).
func (s *Server) Spill(ctx context.Context, req *agentv1.SpillRequest) (*agentv1.SpillResponse, error) {
	ref := req.GetPod()
	var lockTimeout time.Duration
	if d := req.GetLockTimeout(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "lock_timeout: want a positive duration")
		}
		lockTimeout = d.AsDuration()
	}
	tiers, err := s.tiers(ctx)
	if err != nil {
		return nil, err
	}
	if tiers == nil {
		return nil, status.Error(codes.FailedPrecondition, "this node has no storage tiers for containers: the agent runs without --disk-tier-dir or --containerd-socket")
	}
	klog.FromContext(ctx).V(2).Info("gRPC request", "method", "Spill", "pod", klog.KRef(ref.GetNamespace(), ref.GetName()), "container", ref.GetContainer(), "tier", req.GetTier())
	out, err := tiers.Spill(ctx, podRef(ref), kv1.StorageTier(req.GetTier()), lockTimeout)
	if err != nil {
		return nil, tierStatus(err)
	}
	return &agentv1.SpillResponse{
		Result:      result(engine.Result{Bytes: out.VRAMBytes, Steps: out.Steps}),
		Tier:        string(out.Tier),
		Location:    out.Location,
		SizeBytes:   out.Manifest.Size(),
		StoredBytes: out.Manifest.StoredSize(),
		KeyId:       out.Manifest.Encryption.KeyID,
	}, nil
}

// FetchSpilled brings a spilled container's image back for the shim's restore (package tier,
// Containers.Fetch). A node without storage tiers has no spilled images: the answer is none.
func (s *Server) FetchSpilled(ctx context.Context, req *agentv1.FetchSpilledRequest) (*agentv1.FetchSpilledResponse, error) {
	ref := req.GetPod()
	tiers, err := s.tiers(ctx)
	if err != nil {
		return nil, err
	}
	if tiers == nil {
		return &agentv1.FetchSpilledResponse{}, nil
	}
	klog.FromContext(ctx).V(4).Info("gRPC request", "method", "FetchSpilled", "pod", klog.KRef(ref.GetNamespace(), ref.GetName()), "container", ref.GetContainer(),
		"containerID", req.GetContainerId())
	out, err := tiers.Fetch(ctx, podRef(ref))
	if err != nil {
		return nil, tierStatus(err)
	}
	return &agentv1.FetchSpilledResponse{ImageDir: out.Dir, Tier: string(out.Tier), Result: result(engine.Result{Steps: out.Steps})}, nil
}

// ReleaseSpilled ends a restore FetchSpilled prepared (package tier, Containers.Release).
func (s *Server) ReleaseSpilled(ctx context.Context, req *agentv1.ReleaseSpilledRequest) (*agentv1.ReleaseSpilledResponse, error) {
	ref := req.GetPod()
	tiers, err := s.tiers(ctx)
	if err != nil {
		return nil, err
	}
	if tiers == nil {
		return nil, status.Error(codes.FailedPrecondition, "this node has no storage tiers for containers")
	}
	klog.FromContext(ctx).V(2).Info("gRPC request", "method", "ReleaseSpilled", "pod", klog.KRef(ref.GetNamespace(), ref.GetName()), "imageDir", req.GetImageDir(),
		"restored", req.GetRestored())
	if err := tiers.Release(ctx, podRef(ref), req.GetImageDir(), req.GetRestored()); err != nil {
		return nil, tierStatus(err)
	}
	return &agentv1.ReleaseSpilledResponse{}, nil
}

// tiers is the storage tiers of the agent's own node; nil when it has none.
func (s *Server) tiers(ctx context.Context) (*tier.Containers, error) {
	name, err := s.node(ctx)
	if err != nil {
		return nil, err
	}
	n, ok := s.nodes.Node(name)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "this agent does not serve node %q", name)
	}
	return n.Tiers, nil
}

func podRef(ref *agentv1.PodRef) tier.PodRef {
	return tier.PodRef{Namespace: ref.GetNamespace(), Name: ref.GetName(), UID: ref.GetUid(), Container: ref.GetContainer()}
}

// tierStatus converts the errors of tier.Containers to gRPC codes.
func tierStatus(err error) error {
	code := codes.Internal
	switch tier.ContainerCauseOf(err) {
	case tier.ContainerInvalid:
		code = codes.InvalidArgument
	case tier.ContainerBusy:
		code = codes.Aborted
	case tier.ContainerNotFound:
		code = codes.NotFound
	case tier.ContainerExists:
		code = codes.AlreadyExists
	case tier.ContainerNoKey, tier.ContainerNoObjectStore:
		code = codes.FailedPrecondition
	case tier.ContainerFetchFailed, tier.ContainerNotYet:
		// Retryable: the kubelet creates the container again, and after the pod's Resume the
		// create restores it.
		code = codes.Unavailable
	case tier.ContainerImageCorrupt:
		code = codes.DataLoss
	case tier.ContainerCheckpoint:
		var ce *checkpoint.Error
		if errors.As(err, &ce) {
			return status.Error(status.Code(checkpointStatus(err)), err.Error())
		}
	}
	return status.Error(code, err.Error())
}
