package podmap

import (
	"context"
	"fmt"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"github.com/containerd/containerd/namespaces"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/types"
)

// ContainerdNamespace is where the CRI plugin keeps Kubernetes' containers.
const ContainerdNamespace = "k8s.io"

// Labels the kubelet sets, through the CRI, on every container of a pod.
const (
	labelPodNamespace = "io.kubernetes.pod.namespace"
	labelPodName      = "io.kubernetes.pod.name"
	labelPodUID       = "io.kubernetes.pod.uid"
)

// Containerd is a ContainerLookup on a containerd daemon, through its containers API. (Not the
// full containerd client: that one links Go's plugin package, which binds every symbol at load
// time and so breaks NVML's lazily resolved ones.)
type Containerd struct {
	conn       *grpc.ClientConn
	containers containersapi.ContainersClient
}

var _ ContainerLookup = (*Containerd)(nil)

// NewContainerd returns a lookup on the containerd daemon at address (its unix socket). It
// connects on first use.
func NewContainerd(address string) (*Containerd, error) {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("containerd at %s: %w", address, err)
	}
	return &Containerd{conn: conn, containers: containersapi.NewContainersClient(conn)}, nil
}

// PodOfContainer returns the pod of container id from the container's labels.
func (c *Containerd) PodOfContainer(ctx context.Context, id string) (PodRef, error) {
	resp, err := c.containers.Get(namespaces.WithNamespace(ctx, ContainerdNamespace), &containersapi.GetContainerRequest{ID: id})
	if status.Code(err) == codes.NotFound {
		return PodRef{}, fmt.Errorf("container %s is not in containerd namespace %s: %w", id, ContainerdNamespace, ErrUnknownPod)
	}
	if err != nil {
		return PodRef{}, fmt.Errorf("asking containerd for container %s: %w", id, err)
	}
	labels := resp.GetContainer().GetLabels()
	ref := PodRef{Namespace: labels[labelPodNamespace], Name: labels[labelPodName], UID: types.UID(labels[labelPodUID])}
	if ref.Namespace == "" || ref.Name == "" || ref.UID == "" {
		return PodRef{}, fmt.Errorf("container %s has no pod labels (%s, %s, %s): %w", id, labelPodNamespace, labelPodName, labelPodUID, ErrNotInPod)
	}
	return ref, nil
}

// Close closes the connection.
func (c *Containerd) Close() error { return c.conn.Close() }
