// Package e2e holds the runtime tests: Kybernate's parts against a real containerd daemon,
// runc and CRIU, started privately by hack/containerd.sh with the shim built from this tree.
// They need root, Debian's containerd and runc, and CRIU >= 4.1 (hack/install-runtime.sh);
// outside CI they skip with the reason when that is missing, in CI (test/ci: CI=true) that fails
// them. Where CRIU cannot dump a plain process on the kernel (the preflight finds out: criu dump
// hangs on some kernel builds), the checkpoint and restore tests skip outside CI and fail in CI,
// naming the kernel, unless test/ci/allowed-skips.yaml names that kernel release.
//
// KYBERNATE_CRIU=PATH makes the tests and containerd's runc use that criu binary instead of the
// one of hack/install-runtime.sh.
//
// With KYBERNATE_E2E_PREBUILT=DIR (a machine with no Go and no package registry, see
// test/e2e/pack-gpu.sh) nothing is installed or built: the shim, the test agent, the counter
// image and CRIU come from DIR (containerd-shim-kybernate-v1, e2e-agent, counter.tar,
// criu/bin/criu), containerd, containerd-shim-runc-v2 and runc from PATH.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"github.com/containerd/containerd/namespaces"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kybernate/kybernate/nodeagent/podmap"
	"github.com/kybernate/kybernate/test/ci"
)

var (
	socket     string
	skipReason string
	// criuBroken is why checkpoint and restore tests cannot run: CRIU cannot dump on this kernel.
	criuBroken string
	// imageTar is the counter image (hack/build-image.sh).
	imageTar string
	// shimDir holds the shim binary built for the tests.
	shimDir string
	// agentBin serves the agent API (test/e2e/agent).
	agentBin string
	// imagesRoot is the checkpoint folder of the shims (their checkpointDir) and the test
	// agent (--checkpoint-dir): containers restore only from images of their pod's namespace
	// under it.
	imagesRoot string
	// shimAgentSocket is where the shims find the agent (their agentSocket): the test agent of
	// the tests that need the shim to call it listens there.
	shimAgentSocket string
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
	if err := os.MkdirAll(filepath.Join(root, ".cache"), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir, err := os.MkdirTemp(filepath.Join(root, ".cache"), "e2e-containerd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if p := os.Getenv(prebuiltEnv); p != "" {
		// The daemons' shims find runc's criu on PATH.
		os.Setenv("PATH", filepath.Join(p, "criu", "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
	}
	imagesRoot = filepath.Join(dir, "images")
	shimAgentSocket = filepath.Join(dir, "agent.sock")
	shimConfig := filepath.Join(dir, "shim.yaml")
	if err := os.WriteFile(shimConfig, []byte("checkpointDir: "+imagesRoot+"\nagentSocket: "+shimAgentSocket+"\n"), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Every daemon's shims, migration's second daemon's too, read it.
	os.Setenv("KYBERNATE_SHIM_CONFIG", shimConfig)
	script := filepath.Join(root, "hack", "containerd.sh")
	env := append(os.Environ(), "KYBERNATE_CONTAINERD_DIR="+dir, "KYBERNATE_SHIM_DIR="+filepath.Join(dir, "bin"))
	if err := setup(root, dir, env); err != nil {
		if ci.Enabled() {
			fmt.Fprintf(os.Stderr, "e2e: %v; CI is set: failing instead of skipping\n", err)
			return 1
		}
		skipReason = fmt.Sprintf("e2e tests need root, Debian's containerd and runc, and CRIU from hack/install-runtime.sh: %v", err)
		return m.Run()
	}
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

// prebuiltEnv names the folder of prebuilt binaries, image and CRIU; see the package doc.
const prebuiltEnv = "KYBERNATE_E2E_PREBUILT"

// setup installs the runtime (cached after the first run), builds the shim and the counter
// image, or takes them from $KYBERNATE_E2E_PREBUILT, starts containerd and runs the CRIU
// preflight.
func setup(root, dir string, env []string) error {
	if os.Geteuid() != 0 {
		return errors.New("not root")
	}
	shimDir = filepath.Join(dir, "bin")
	var criu string
	var err error
	if p := os.Getenv(prebuiltEnv); p != "" {
		if criu, err = usePrebuilt(p); err != nil {
			err = fmt.Errorf("%s=%s: %w", prebuiltEnv, p, err)
		}
	} else {
		criu, err = installAndBuild(root, dir)
	}
	if err != nil {
		return err
	}

	up := exec.Command(filepath.Join(root, "hack", "containerd.sh"), "up")
	up.Env, up.Stderr = env, os.Stderr
	out, err := up.Output()
	if err != nil {
		return fmt.Errorf("hack/containerd.sh up: %w", err)
	}
	socket = strings.TrimSpace(string(out))

	if err := preflight(criu, dir); err != nil {
		criuBroken = err.Error()
		what := "SKIP"
		if ci.Enabled() {
			what = "FAIL (CI)"
		}
		fmt.Fprintf(os.Stderr, "\n!!!!! e2e: CHECKPOINT/RESTORE TESTS %s: %s !!!!!\n\n", what, criuBroken)
	}
	return nil
}

// usePrebuilt takes the shim, the test agent and the counter image from folder p and returns
// the path of its CRIU. The shim is copied next to the daemons' folders, where migration's
// second daemon looks for it.
func usePrebuilt(p string) (string, error) {
	criu := filepath.Join(p, "criu", "bin", "criu")
	agentBin = filepath.Join(p, "e2e-agent")
	imageTar = filepath.Join(p, "counter.tar")
	for _, f := range []string{criu, agentBin, imageTar} {
		if _, err := os.Stat(f); err != nil {
			return "", err
		}
	}
	shim, err := os.ReadFile(filepath.Join(p, "containerd-shim-kybernate-v1"))
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(shimDir, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(shimDir, "containerd-shim-kybernate-v1"), shim, 0o755); err != nil {
		return "", err
	}
	return criu, nil
}

// installAndBuild installs the runtime (cached after the first run) and builds the shim, the test agent
// and the counter image under dir; it returns the path of CRIU.
func installAndBuild(root, dir string) (string, error) {
	install := exec.Command(filepath.Join(root, "hack", "install-runtime.sh"))
	install.Stderr = os.Stderr
	out, err := install.Output()
	if err != nil {
		return "", fmt.Errorf("hack/install-runtime.sh: %w", err)
	}
	criu := filepath.Join(strings.TrimSpace(string(out)), "criu")
	if c := os.Getenv(criuEnv); c != "" {
		criu = c
	}

	build := exec.Command("go", "build", "-o", filepath.Join(shimDir, "containerd-shim-kybernate-v1"), "./shim/cmd/containerd-shim-kybernate-v1")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building the shim: %w", err)
	}
	agentBin = filepath.Join(dir, "e2e-agent")
	build = exec.Command("go", "build", "-o", agentBin, "./test/e2e/agent")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building the test agent: %w", err)
	}
	imageTar = filepath.Join(dir, "counter.tar")
	img := exec.Command(filepath.Join(root, "hack", "build-image.sh"), imageTar, counterImage)
	img.Stderr = os.Stderr
	if err := img.Run(); err != nil {
		return "", fmt.Errorf("hack/build-image.sh: %w", err)
	}

	return criu, nil
}

// criuEnv names a criu binary to use instead of hack/install-runtime.sh's; see the package doc.
const criuEnv = "KYBERNATE_CRIU"

// preflight dumps a host `sleep` with CRIU, bounded by 20 seconds: on some kernel builds
// (seen on 6.18.44-fc-v769, a PVM guest; checkpoint-restore/criu issue #162) criu dump hangs
// in its parasite cure for any process. A hang or a failed dump is an error naming the kernel:
// CRIU cannot checkpoint anything here, whatever Kybernate does.
func preflight(criu, dir string) error {
	sleep := exec.Command("sleep", "1000")
	sleep.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := sleep.Start(); err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	defer func() { _ = sleep.Process.Kill(); _ = sleep.Wait() }()
	images, err := os.MkdirTemp(dir, "preflight-")
	if err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	defer os.RemoveAll(images)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, criu, "dump", "-t", strconv.Itoa(sleep.Process.Pid), "-D", images, "-o", "dump.log", "--shell-job").CombinedOutput()
	if ctx.Err() != nil {
		return fmt.Errorf("criu dump of a sleep did not finish within 20s on kernel %s (criu dump hangs on some kernel builds, checkpoint-restore/criu issue #162)", ci.KernelRelease())
	}
	if err != nil {
		// criu writes its errors to dump.log; its output is mostly empty.
		log, _ := os.ReadFile(filepath.Join(images, "dump.log"))
		return fmt.Errorf("CRIU cannot dump a sleep on kernel %s: %s: %w%s%s", ci.KernelRelease(), criu, err, tailOf(out), tailOf(log))
	}
	fmt.Fprintf(os.Stderr, "e2e: preflight: criu dump of a sleep took %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// tailOf is ": " and the last line of a command's output, or "" when it printed nothing.
func tailOf(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if last := lines[len(lines)-1]; last != "" {
		return ": " + last
	}
	return ""
}

func containers(t *testing.T) containersapi.ContainersClient {
	t.Helper()
	if skipReason != "" {
		ci.Skip(t, skipReason)
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
