package shim

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/log"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
	"github.com/kybernate/kybernate/shim/spec"
)

// criContainerName is the CRI plugin's annotation with the container's name in its pod.
const criContainerName = "io.kubernetes.cri.container-name"

// kybernatePrefix starts the annotations of the pods Kybernate manages; the CRI plugin copies
// them into the containers' specs (pod_annotations).
const kybernatePrefix = "kybernate.io/"

// Agent is the node agent's API as the shim uses it, on the agent's unix socket.
type Agent interface {
	// Restore puts the GPU memory of a container restored from an image onto its GPUs.
	Restore(ctx context.Context, socket string, req *agentv1.RestoreRequest) (*agentv1.RestoreResponse, error)
	// FetchSpilled brings the pod's spilled image of the container back, decrypted under the
	// checkpoint folder; an empty image_dir when there is none.
	FetchSpilled(ctx context.Context, socket string, req *agentv1.FetchSpilledRequest) (*agentv1.FetchSpilledResponse, error)
	// ReleaseSpilled ends what FetchSpilled began.
	ReleaseSpilled(ctx context.Context, socket string, req *agentv1.ReleaseSpilledRequest) error
}

// SocketAgent is the Agent on the agent's unix socket, one connection per call. The agent
// serves root peers only; shims run as root.
type SocketAgent struct{}

var _ Agent = SocketAgent{}

func dial(socket string) (*grpc.ClientConn, agentv1.NodeAgentServiceClient, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return conn, agentv1.NewNodeAgentServiceClient(conn), nil
}

// Restore calls the agent's Restore.
func (SocketAgent) Restore(ctx context.Context, socket string, req *agentv1.RestoreRequest) (*agentv1.RestoreResponse, error) {
	conn, c, err := dial(socket)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return c.Restore(ctx, req)
}

// FetchSpilled calls the agent's FetchSpilled. An agent that does not know the call (an older
// one) has no spilled images.
func (SocketAgent) FetchSpilled(ctx context.Context, socket string, req *agentv1.FetchSpilledRequest) (*agentv1.FetchSpilledResponse, error) {
	conn, c, err := dial(socket)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	resp, err := c.FetchSpilled(ctx, req)
	if status.Code(err) == codes.Unimplemented {
		return &agentv1.FetchSpilledResponse{}, nil
	}
	return resp, err
}

// ReleaseSpilled calls the agent's ReleaseSpilled.
func (SocketAgent) ReleaseSpilled(ctx context.Context, socket string, req *agentv1.ReleaseSpilledRequest) error {
	conn, c, err := dial(socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = c.ReleaseSpilled(ctx, req)
	return err
}

// spilledPod is the pod and container a container of a Kybernate pod belongs to, from the CRI
// plugin's annotations; nil for containers that are not in a pod or whose pod has no
// kybernate.io/ annotation: the storage tiers spill only the pods Kybernate manages.
func spilledPod(a map[string]string) *agentv1.PodRef {
	ref := &agentv1.PodRef{Namespace: a[criSandboxNamespace], Name: a[criSandboxName], Uid: a[criSandboxUID], Container: a[criContainerName]}
	if ref.Namespace == "" || ref.Name == "" || ref.Uid == "" || ref.Container == "" {
		return nil
	}
	for k := range a {
		if strings.HasPrefix(k, kybernatePrefix) {
			return ref
		}
	}
	return nil
}

// fetchSpilled asks the agent whether the container's pod has a spilled image of it and has
// it brought back; nil when there is none. A container of a pod that may have been spilled is
// not created while the agent cannot answer: starting it fresh would lose what the image
// holds. The kubelet tries again.
func (s *Service) fetchSpilled(ctx context.Context, id string, a map[string]string, cfg spec.Config) (*agentv1.ReleaseSpilledRequest, error) {
	ref := spilledPod(a)
	actx, cancel := context.WithTimeout(ctx, cfg.AgentTimeout.Duration)
	defer cancel()
	resp, err := s.agent.FetchSpilled(actx, cfg.AgentSocket, &agentv1.FetchSpilledRequest{Pod: ref, ContainerId: id})
	if err != nil {
		// The agent could not be asked, or it could not bring the image back (a corrupt image
		// stays refused until it is repaired or deleted).
		var kind error = errdefs.ErrUnavailable
		switch status.Code(err) {
		case codes.DataLoss, codes.FailedPrecondition, codes.InvalidArgument:
			kind = errdefs.ErrFailedPrecondition
		}
		return nil, fmt.Errorf("asking the node agent at %s whether pod %s/%s has a spilled image of container %s: %v; the container is not created, so that a spilled one does not start afresh: %w",
			cfg.AgentSocket, ref.GetNamespace(), ref.GetName(), ref.GetContainer(), err, kind)
	}
	if resp.GetImageDir() == "" {
		return nil, nil
	}
	log.G(ctx).WithField("id", id).WithField("image", resp.GetImageDir()).WithField("tier", resp.GetTier()).
		Info("kybernate: the pod's container was spilled; it is restored from its image")
	return &agentv1.ReleaseSpilledRequest{Pod: ref, ImageDir: resp.GetImageDir()}, nil
}

// releaseSpilled tells the agent that the restore from a spilled image is over: restored, the
// stored image is deleted; otherwise it is kept for the next try. A failure is logged: the
// container's fate does not depend on it.
func (s *Service) releaseSpilled(ctx context.Context, id string, rs *restore, restored bool) {
	if rs == nil || rs.spilled == nil {
		return
	}
	req := &agentv1.ReleaseSpilledRequest{Pod: rs.spilled.GetPod(), ImageDir: rs.spilled.GetImageDir(), Restored: restored}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rs.cfg.AgentTimeout.Duration)
	defer cancel()
	logger := log.G(ctx).WithField("id", id).WithField("image", req.GetImageDir()).WithField("restored", restored)
	if err := s.agent.ReleaseSpilled(actx, rs.cfg.AgentSocket, req); err != nil {
		logger.WithError(err).Error("kybernate: releasing the spilled image through the agent failed")
		return
	}
	logger.Info("kybernate: spilled image released")
}
