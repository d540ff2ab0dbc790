package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/test/ci"
)

// checkpointEnv is an env with the agent's gRPC API serving checkpoints on its containerd
// namespace, as the agent does on a node (there in namespace k8s.io): test/e2e/agent, a process
// of its own.
type checkpointEnv struct {
	*env
	agent agentv1.NodeAgentServiceClient
	// images is a folder for checkpoint images.
	images string
}

func newCheckpointEnv(t testing.TB) *checkpointEnv {
	t.Helper()
	if criuBroken != "" {
		ci.Skip(t, "CHECKPOINT/RESTORE CANNOT RUN: "+criuBroken)
	}
	e := newEnv(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	agent := exec.Command(agentBin, "--containerd-socket", socket, "--namespace", e.ns, "--socket", sock, "--checkpoint-dir", imagesRoot)
	agent.Stdout, agent.Stderr = os.Stderr, os.Stderr
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = agent.Process.Signal(syscall.SIGTERM)
		if err := agent.Wait(); err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &checkpointEnv{env: e, agent: agentv1.NewNodeAgentServiceClient(conn), images: testImages(t)}
}

// testImages is a folder of this test's images in namespace ml's folder under imagesRoot,
// removed when the test ends.
func testImages(t testing.TB) string {
	t.Helper()
	ns, err := image.NamespaceDir(imagesRoot, "ml")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(ns, "test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// restoreFrom are the annotations of a container of a pod in namespace ml (the CRI gives
// containers their sandbox's namespace) restored from dir.
func restoreFrom(dir string) map[string]string {
	return map[string]string{kv1.AnnotationRestoreFrom: dir, "io.kubernetes.cri.sandbox-namespace": "ml"}
}

// podLabels are the kubelet's labels of container name of pod ml/<pod>.
func podLabels(pod, name string) map[string]string {
	return map[string]string{
		"io.kubernetes.pod.namespace": "ml", "io.kubernetes.pod.name": pod, "io.kubernetes.pod.uid": "uid-" + pod,
		"io.kubernetes.container.name": name, "io.cri-containerd.kind": "container",
	}
}

func (e *checkpointEnv) checkpoint(pod, dir string, leaveRunning bool) (*agentv1.CheckpointResponse, error) {
	ctx, cancel := context.WithTimeout(e.ctx, 3*time.Minute)
	defer cancel()
	return e.agent.Checkpoint(ctx, &agentv1.CheckpointRequest{
		Pod:          &agentv1.PodRef{Namespace: "ml", Name: pod, Container: "counter"},
		ImageDir:     dir,
		LeaveRunning: leaveRunning,
	}, grpc.WaitForReady(true))
}

// A counter checkpointed through the agent's API and restored by the shim into a new
// container goes on counting where it stopped: N, then N+1. A first checkpoint keeps the
// container running (a copy); the second moves it (the container stops). The counter holds an
// established TCP connection, so both the dump and the restore need tcp-established.
func TestCheckpointAndRestore(t *testing.T) {
	e := newCheckpointEnv(t)
	orig := e.mustRun("counter", ctrOpts{labels: podLabels("train", "counter"), env: []string{"COUNTER_TCP=1", "COUNTER_INTERVAL=0.05"}})
	orig.counting(t, 5)

	copyDir := filepath.Join(e.images, "copy")
	resp, err := e.checkpoint("train", copyDir, true)
	if err != nil {
		t.Fatalf("checkpoint (leave running): %v", err)
	}
	if resp.GetImageDir() != copyDir || resp.GetCreated() == nil {
		t.Errorf("response %v", resp)
	}
	n := orig.count(t)
	orig.counting(t, n+3) // still running

	moveDir := filepath.Join(e.images, "move")
	if _, err := e.checkpoint("train", moveDir, false); err != nil {
		t.Fatalf("second checkpoint (move): %v", err)
	}
	code := orig.waitExit(t)
	last := orig.count(t)
	t.Logf("original stopped (exit %d) at %d", code, last)

	m, err := image.Verify(moveDir)
	if err != nil {
		t.Fatal(err)
	}
	want := image.Metadata{
		Version:   image.Version,
		Pod:       image.Pod{Namespace: "ml", Name: "train", UID: "uid-train"},
		Container: image.Container{Name: "counter", ID: "counter", Image: counterImage},
		Node:      "e2e",
	}
	if diff := cmp.Diff(want, m, cmpopts.IgnoreFields(image.Metadata{}, "Files", "Created", "CRIUVersion")); diff != "" {
		t.Errorf("metadata (-want +got):\n%s", diff)
	}
	if !strings.HasPrefix(m.CRIUVersion, "4.") || time.Since(m.Created) > 5*time.Minute {
		t.Errorf("metadata criuVersion %q, created %s", m.CRIUVersion, m.Created)
	}
	if !slices.ContainsFunc(m.Files, func(f image.File) bool { return f.Name == "inventory.img" }) {
		t.Errorf("metadata files %v: no inventory.img", m.Files)
	}
	private(t, moveDir)
	before := tree(t, moveDir)

	restored := e.mustRun("counter-restored", ctrOpts{labels: podLabels("train-2", "counter"),
		annotations: restoreFrom(moveDir)})
	restored.resumedAt(t, last)
	if diff := cmp.Diff(before, tree(t, moveDir)); diff != "" {
		t.Errorf("the restore changed the image (-before +after):\n%s", diff)
	}

	// The copy restores too, next to the restored move: it goes on from where the copy was taken.
	fromCopy := e.mustRun("counter-from-copy", ctrOpts{labels: podLabels("train-3", "counter"),
		annotations: restoreFrom(copyDir)})
	fromCopy.counting(t, 2)
	if first, _ := strconv.Atoi(fromCopy.stdout.lines()[0]); first <= 5 || first > n+1 {
		t.Errorf("counter restored from the copy started at %d, want 6..%d", first, n+1)
	}
}

// Failed checkpoints leave the container running and write no image.
func TestCheckpointFailuresRollBack(t *testing.T) {
	e := newCheckpointEnv(t)

	// A read-only file system where the image should go.
	ro := filepath.Join(e.images, "readonly")
	if err := os.Mkdir(ro, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", ro, "tmpfs", unix.MS_RDONLY, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(ro, unix.MNT_DETACH) })
	existing := filepath.Join(e.images, "existing")
	if err := os.Mkdir(existing, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(existing, "keep"), []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}

	counter := e.mustRun("counter", ctrOpts{labels: podLabels("train", "counter"), env: []string{"COUNTER_INTERVAL=0.05"}})
	// CRIU refuses to dump an open deleted file over its ghost limit (1 MiB): a CRIU error.
	ghost := e.mustRun("ghost", ctrOpts{labels: podLabels("ghost", "counter"), env: []string{"COUNTER_GHOST_KB=4096", "COUNTER_INTERVAL=0.05"}})
	counter.counting(t, 2)
	ghost.counting(t, 2)

	tests := []struct {
		name     string
		pod      string
		dir      string
		c        *ctr
		wantCode codes.Code
		wantMsg  string
		// wantDir: the folder exists afterwards (it did before).
		wantDir bool
	}{
		{name: "unwritable image folder", pod: "train", dir: filepath.Join(ro, "img"), c: counter,
			wantCode: codes.FailedPrecondition, wantMsg: "read-only file system"},
		{name: "image folder exists", pod: "train", dir: existing, c: counter, wantDir: true,
			wantCode: codes.AlreadyExists, wantMsg: "exists already"},
		{name: "relative image folder", pod: "train", dir: "images/x", c: counter,
			wantCode: codes.InvalidArgument, wantMsg: "want a clean absolute path"},
		{name: "criu error", pod: "ghost", dir: filepath.Join(e.images, "ghost"), c: ghost,
			wantCode: codes.Aborted, wantMsg: "criu dump of container ghost"},
		{name: "no such pod", pod: "nobody", dir: filepath.Join(e.images, "nobody"), c: counter,
			wantCode: codes.NotFound, wantMsg: "pod ml/nobody has no container \"counter\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entries := names(t, e.images)
			_, err := e.checkpoint(tt.pod, tt.dir, false)
			if got := status.Code(err); got != tt.wantCode || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("error %v (%s), want %s containing %q", err, got, tt.wantCode, tt.wantMsg)
			}
			t.Logf("error: %v", err)
			if status.Code(err) != codes.InvalidArgument {
				if _, serr := os.Stat(tt.dir); (serr == nil) != tt.wantDir {
					t.Errorf("image folder %s: stat %v, want it there %v", tt.dir, serr, tt.wantDir)
				}
			}
			if diff := cmp.Diff(entries, names(t, e.images)); diff != "" {
				t.Errorf("files next to the images changed (-before +after):\n%s", diff)
			}
			st, err := tt.c.task.Status(e.ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.Status != "running" {
				t.Errorf("container status %s, want running", st.Status)
			}
			n := tt.c.count(t)
			tt.c.counting(t, n+2)
		})
	}
	if data, err := os.ReadFile(filepath.Join(existing, "keep")); err != nil || string(data) != "mine" {
		t.Errorf("existing folder's file: %q, %v", data, err)
	}
}

// A missing or damaged image is refused with a clear error; the image and the container it
// came from stay as they were.
func TestRestoreFromBadImages(t *testing.T) {
	e := newCheckpointEnv(t)
	orig := e.mustRun("counter", ctrOpts{labels: podLabels("train", "counter")})
	orig.counting(t, 2)
	good := filepath.Join(e.images, "good")
	if _, err := e.checkpoint("train", good, true); err != nil {
		t.Fatal(err)
	}

	corrupt := filepath.Join(e.images, "corrupt")
	copyTree(t, good, corrupt)
	m, err := image.Read(corrupt)
	if err != nil {
		t.Fatal(err)
	}
	var pages string
	for _, f := range m.Files {
		if strings.HasPrefix(f.Name, "pages-") && f.Size > 0 {
			pages = filepath.Join(corrupt, f.Name)
		}
	}
	data, err := os.ReadFile(pages)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(pages, data, 0o600); err != nil {
		t.Fatal(err)
	}
	unfinished := filepath.Join(e.images, "unfinished")
	copyTree(t, good, unfinished)
	if err := os.Remove(filepath.Join(unfinished, image.MetadataFile)); err != nil {
		t.Fatal(err)
	}
	gpu := filepath.Join(e.images, "gpu")
	copyTree(t, good, gpu)
	if err := os.Remove(filepath.Join(gpu, image.MetadataFile)); err != nil {
		t.Fatal(err)
	}
	gm := m
	gm.GPUs = []string{"GPU-11111111-2222-3333-4444-555555555555"}
	if _, err := image.Write(gpu, gm); err != nil {
		t.Fatal(err)
	}
	// Isolation: images of other namespaces, outside the checkpoint folder, or reached
	// through a link or "..", are refused whatever they hold.
	outside := filepath.Join(t.TempDir(), "good")
	copyTree(t, good, outside)
	otherNS, err := image.NamespaceDir(imagesRoot, "other")
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(otherNS, filepath.Base(e.images)+"-good")
	copyTree(t, good, other)
	t.Cleanup(func() { os.RemoveAll(other) })
	link := e.images + "-link" // next to e.images: tree does not follow links
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(link) })
	before := tree(t, e.images)

	tests := []struct {
		name, dir, wantMsg string
	}{
		{name: "missing", dir: filepath.Join(e.images, "missing"), wantMsg: "no such folder"},
		{name: "no metadata", dir: unfinished, wantMsg: "has no metadata.json"},
		{name: "corrupt", dir: corrupt, wantMsg: "checkpoint image corrupt"},
		{name: "relative", dir: "images/good", wantMsg: "want an absolute path"},
		// A GPU image restores only into a container with its GPUs (kybernate.io/gpus).
		{name: "gpu memory", dir: gpu, wantMsg: "but the container has 0 gpus in kybernate.io/gpus"},
		{name: "outside the checkpoint folder", dir: outside, wantMsg: image.RefusedOutside},
		{name: "other namespace", dir: other, wantMsg: image.RefusedOtherNamespace},
		{name: "symbolic link", dir: link, wantMsg: image.RefusedSymlink},
		{name: "dot dot", dir: e.images + "/../" + filepath.Base(e.images) + "/good", wantMsg: image.RefusedInvalidPath},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := e.run("restore-"+strconv.Itoa(i), ctrOpts{labels: podLabels("train-2", "counter"),
				annotations: restoreFrom(tt.dir)})
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantMsg)
			}
			t.Logf("error: %v", err)
			if c != nil && c.task != nil {
				t.Errorf("a task was created")
			}
		})
	}
	if diff := cmp.Diff(before, tree(t, e.images)); diff != "" {
		t.Errorf("images changed (-before +after):\n%s", diff)
	}
	n := orig.count(t)
	orig.counting(t, n+2)

	// The agent's Restore has nothing to put back for a container without GPUs; GPU images need
	// the CUDA driver (this agent has none: the GPU part runs in test/gpu).
	ml := &agentv1.PodRef{Namespace: "ml", Name: "train-2"}
	if _, err := e.agent.Restore(e.ctx, &agentv1.RestoreRequest{Pod: ml, ImageDir: good, ContainerId: "counter"}); err != nil {
		t.Errorf("Restore of an image without gpus: %v", err)
	}
	if _, err := e.agent.Restore(e.ctx, &agentv1.RestoreRequest{Pod: ml, ImageDir: other, ContainerId: "counter"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("Restore of another namespace's image: %v, want PermissionDenied", err)
	}
	_, err = e.agent.Restore(e.ctx, &agentv1.RestoreRequest{Pod: ml, ImageDir: gpu, ContainerId: "counter"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "CUDA driver is not usable") || !strings.Contains(err.Error(), "the image is kept") {
		t.Errorf("Restore of a gpu image: %v, want FailedPrecondition: no CUDA driver, image kept", err)
	}
}

// private checks that an image's folders are 0700 and its files 0600.
func private(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		want := image.FileMode
		if d.IsDir() {
			want = image.DirMode
		}
		if info.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, info.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// tree maps every file under dir to its SHA-256.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// names lists dir.
func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, en := range entries {
		out = append(out, en.Name())
	}
	return out
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		t.Fatal(err)
	}
}

// A checkpoint that fills the disk rolls back cleanly: on an 8 MiB tmpfs filled up to a few
// KiB, the dump fails with the disk's error, the image folder and CRIU's work folder are gone,
// the container runs on (it was frozen for the dump), and once there is room again the same
// checkpoint succeeds.
func TestCheckpointOnFullDisk(t *testing.T) {
	e := newCheckpointEnv(t)
	disk := filepath.Join(e.images, "small-disk")
	if err := os.Mkdir(disk, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", disk, "tmpfs", 0, "size=8m,mode=0700"); err != nil {
		t.Fatalf("mounting an 8 MiB tmpfs (the e2e tests run as root): %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(disk, unix.MNT_DETACH) })
	filler := filepath.Join(disk, "filler")
	fill(t, filler, 16<<10)

	counter := e.mustRun("counter", ctrOpts{labels: podLabels("train", "counter"), env: []string{"COUNTER_INTERVAL=0.05"}})
	counter.counting(t, 3)
	dir := filepath.Join(disk, "img")
	_, err := e.checkpoint("train", dir, false)
	if err == nil {
		t.Fatal("checkpoint onto a full disk succeeded")
	}
	t.Logf("error: %v", err)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "is full") || !strings.Contains(err.Error(), "no image written") {
		t.Errorf("error %v: want ResourceExhausted saying the disk is full and no image was written (rolled back)", err)
	}
	if got := names(t, disk); !slices.Equal(got, []string{"filler"}) {
		t.Errorf("the disk holds %v after the failed checkpoint, want only the filler (no image, no criu work folder)", got)
	}
	n := counter.count(t)
	counter.counting(t, n+3) // thawed, still running

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if _, err := e.checkpoint("train", dir, true); err != nil {
		t.Fatalf("checkpoint with room again: %v", err)
	}
	if _, err := image.Verify(dir); err != nil {
		t.Error(err)
	}
	private(t, dir)
	n = counter.count(t)
	counter.counting(t, n+2)
}

// fill writes a file that leaves about free bytes on its file system.
func fill(t *testing.T, path string, free uint64) {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(path), &st); err != nil {
		t.Fatal(err)
	}
	avail := st.Bavail * uint64(st.Bsize)
	if avail <= free {
		t.Fatalf("%s has %d bytes free, want more than %d", filepath.Dir(path), avail, free)
	}
	if err := os.WriteFile(path, make([]byte, avail-free), 0o600); err != nil {
		t.Fatal(err)
	}
}
