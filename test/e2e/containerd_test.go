// Package e2e holds the runtime tests: Kybernate's parts against a real containerd daemon,
// started privately by hack/containerd.sh. They need root and Debian's containerd; outside CI
// they skip with the reason when containerd cannot start, in CI (CI=true) that fails them.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"github.com/containerd/containerd/namespaces"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kybernate/kybernate/nodeagent/podmap"
)

var (
	socket     string
	skipReason string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir, err := os.MkdirTemp(filepath.Join(root, ".cache"), "e2e-containerd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	script := filepath.Join(root, "hack", "containerd.sh")
	env := append(os.Environ(), "KYBERNATE_CONTAINERD_DIR="+dir)
	up := exec.Command(script, "up")
	up.Env, up.Stderr = env, os.Stderr
	out, err := up.Output()
	if err != nil {
		if os.Getenv("CI") == "true" {
			fmt.Fprintf(os.Stderr, "e2e: hack/containerd.sh up: %v; CI is set: failing instead of skipping\n", err)
			return 1
		}
		skipReason = fmt.Sprintf("e2e tests need a private containerd (root, Debian's containerd package): hack/containerd.sh up: %v", err)
		return m.Run()
	}
	socket = strings.TrimSpace(string(out))
	code := m.Run()
	down := exec.Command(script, "down")
	down.Env, down.Stderr = env, os.Stderr
	if err := down.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: hack/containerd.sh down: %v\n", err)
		code = 1
	}
	if code == 0 {
		os.RemoveAll(dir)
	}
	return code
}

func containers(t *testing.T) containersapi.ContainersClient {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return containersapi.NewContainersClient(conn)
}

// createContainer records a container in containerd's namespace k8s.io as the CRI plugin would:
// only its metadata, with the kubelet's labels; nothing runs.
func createContainer(t *testing.T, client containersapi.ContainersClient, id string, labels map[string]string) {
	t.Helper()
	ctx := namespaces.WithNamespace(t.Context(), podmap.ContainerdNamespace)
	_, err := client.Create(ctx, &containersapi.CreateContainerRequest{Container: &containersapi.Container{
		ID:      id,
		Labels:  labels,
		Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"},
		Spec:    &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec", Value: []byte(`{"ociVersion":"1.1.0"}`)},
	}})
	if err != nil {
		t.Fatalf("creating container %s: %v", id, err)
	}
	t.Cleanup(func() {
		_, _ = client.Delete(context.WithoutCancel(ctx), &containersapi.DeleteContainerRequest{ID: id})
	})
}

// The agent finds a container's pod through containerd, by the labels the kubelet sets.
func TestPodOfContainer(t *testing.T) {
	client := containers(t)
	const podID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	const hostID = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
	createContainer(t, client, podID, map[string]string{
		"io.kubernetes.pod.namespace": "ml", "io.kubernetes.pod.name": "train-7b", "io.kubernetes.pod.uid": "5d0f-uid",
		"io.kubernetes.container.name": "trainer",
	})
	createContainer(t, client, hostID, map[string]string{"purpose": "not a pod"})

	lookup, err := podmap.NewContainerd(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer lookup.Close()

	got, err := lookup.PodOfContainer(t.Context(), podID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(podmap.PodRef{Namespace: "ml", Name: "train-7b", UID: "5d0f-uid"}, got); diff != "" {
		t.Errorf("pod (-want +got):\n%s", diff)
	}
	if _, err := lookup.PodOfContainer(t.Context(), hostID); !errors.Is(err, podmap.ErrNotInPod) {
		t.Errorf("container without pod labels: error %v, want ErrNotInPod", err)
	}
	if _, err := lookup.PodOfContainer(t.Context(), "missing"); !errors.Is(err, podmap.ErrUnknownPod) {
		t.Errorf("unknown container: error %v, want ErrUnknownPod", err)
	}
}

// A daemon that is not there gives an error that says so, not a hang.
func TestPodOfContainerWithoutDaemon(t *testing.T) {
	lookup, err := podmap.NewContainerd(filepath.Join(t.TempDir(), "nothing.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer lookup.Close()
	if _, err := lookup.PodOfContainer(t.Context(), "x"); err == nil || !strings.Contains(err.Error(), "asking containerd for container x") {
		t.Errorf("error %v, want one about asking containerd", err)
	}
}
