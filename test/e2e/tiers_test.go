package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/storage"
	"github.com/kybernate/kybernate/test/ci"
	"github.com/kybernate/kybernate/test/objectstore"
)

// tierEnv is a checkpointEnv whose agent has storage tiers: a disk tier in a folder of the
// test and a real SeaweedFS as the object store.
type tierEnv struct {
	*checkpointEnv
	diskDir string
	// key is the image key of the agent's --image-key-file.
	key  storage.Key
	s3   *storage.S3
	disk *storage.Disk
	// proc is the running test agent, agentArgs what starts it.
	proc      *exec.Cmd
	agentArgs []string
}

// startObjectStore builds weed (up to date in the cache after the first build) and starts a
// SeaweedFS for the test, stopped when it ends.
func startObjectStore(t testing.TB) *objectstore.Server {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Minute)
	defer cancel()
	if p := os.Getenv(prebuiltEnv); p != "" {
		// No Go there: weed comes with the prebuilt folder, or the test cannot run.
		if _, err := os.Stat(filepath.Join(p, "weed")); err != nil {
			ci.Skip(t, "the object store (SeaweedFS weed) is not in "+prebuiltEnv+"="+p)
		}
		t.Setenv("KYBERNATE_BIN_DIR", p)
	} else if err := objectstore.Build(ctx, root); err != nil {
		ci.Skip(t, "the object store cannot be built: "+err.Error())
	}
	s, err := objectstore.Start(ctx, root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("weed log:\n%s", s.Log(30))
		}
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func newTierEnv(t testing.TB) *tierEnv {
	t.Helper()
	if criuBroken != "" {
		ci.Skip(t, "CHECKPOINT/RESTORE CANNOT RUN: "+criuBroken)
	}
	e := newEnv(t)
	store := startObjectStore(t)
	dir := t.TempDir()
	keyFile, rawKey := filepath.Join(dir, "image.key"), []byte(strings.Repeat("e2e-key!", 4))
	if err := os.WriteFile(keyFile, rawKey, 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := storage.ParseKey(rawKey)
	if err != nil {
		t.Fatal(err)
	}
	diskDir := filepath.Join(dir, "tiers")
	// The shims ask the agent on their agentSocket.
	sock := shimAgentSocket
	te := &tierEnv{diskDir: diskDir, key: key, agentArgs: []string{"--containerd-socket", socket, "--namespace", e.ns, "--socket", sock, "--checkpoint-dir", imagesRoot,
		"--disk-tier-dir", diskDir, "--image-key-file", keyFile, "--object-store-env", store.EnvFile()}}
	te.startAgent(t)
	t.Cleanup(func() {
		_ = te.proc.Process.Signal(syscall.SIGTERM)
		if err := te.proc.Wait(); err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	te.checkpointEnv = &checkpointEnv{env: e, agent: agentv1.NewNodeAgentServiceClient(conn)}
	te.waitAgent(t)
	s3, err := storage.NewS3(store.Config)
	if err != nil {
		t.Fatal(err)
	}
	disk, err := storage.NewDisk(diskTierRoot(diskDir))
	if err != nil {
		t.Fatal(err)
	}
	te.s3, te.disk = s3, disk
	return te
}

// startAgent starts the test agent.
func (e *tierEnv) startAgent(t testing.TB) {
	t.Helper()
	e.proc = exec.Command(agentBin, e.agentArgs...)
	e.proc.Stdout, e.proc.Stderr = os.Stderr, os.Stderr
	if err := e.proc.Start(); err != nil {
		t.Fatal(err)
	}
}

// killAgent kills the test agent with SIGKILL, as a node loses its agent.
func (e *tierEnv) killAgent(t testing.TB) {
	t.Helper()
	_ = e.proc.Process.Kill()
	_ = e.proc.Wait()
}

// waitAgent waits until the agent serves. The shims refuse to create a container of a
// Kybernate pod while the agent cannot say whether it was spilled; an empty question is
// refused once it serves.
func (e *tierEnv) waitAgent(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := e.agent.FetchSpilled(ctx, &agentv1.FetchSpilledRequest{}, grpc.WaitForReady(true)); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("the test agent does not serve: %v", err)
	}
}

// diskTierRoot is where the disk tier under --disk-tier-dir dir keeps its images (package tier,
// DiskTierRoot; this package must not link the agent's packages, see test/e2e/agent).
func diskTierRoot(dir string) string { return filepath.Join(dir, "images") }

// kybernatePod are the CRI plugin's annotations of container name of pod ml/<pod> (uid
// uid-<pod>, as podLabels) whose pod has a kybernate.io/ annotation, copied by pod_annotations.
func kybernatePod(pod, name string) map[string]string {
	return map[string]string{
		"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.container-name": name,
		"io.kubernetes.cri.sandbox-namespace": "ml", "io.kubernetes.cri.sandbox-name": pod, "io.kubernetes.cri.sandbox-uid": "uid-" + pod,
		kv1.AnnotationSleep: "Disk",
	}
}

// token is the counter's token (COUNTER_TOKEN) in every "token T N" line of its stderr; the
// test fails when there is none or they differ.
func (c *ctr) token(t testing.TB) string {
	t.Helper()
	tok := ""
	for _, l := range strings.Split(strings.TrimSpace(c.stderr.String()), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 || f[0] != "token" {
			continue
		}
		if tok != "" && f[1] != tok {
			t.Fatalf("container %s wrote two tokens, %s and %s: its shell started twice", c.c.ID(), tok, f[1])
		}
		tok = f[1]
	}
	if tok == "" {
		t.Fatalf("container %s wrote no token (stderr %q)", c.c.ID(), c.stderr.String())
	}
	return tok
}

// A counter spilled RAM -> disk -> object storage (a real SeaweedFS) through the agent's Spill,
// then created again in its pod as the kubelet would after it ended: refused while the node has
// no agent (killed), then, with the next agent, the shim asks it,
// which fetches the image from SeaweedFS, verifies and decrypts it, and the shim restores the
// container from it with CRIU. The restored process goes on at N+1 with the token it drew
// before the spill (the same process, not a new start), the stored images are deleted, and it
// can be spilled again.
func TestSpillToObjectStoreAndRestore(t *testing.T) {
	e := newTierEnv(t)
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Minute)
	defer cancel()
	// The tiers name a pod's image <namespace>/<name>-<uid> (package tier, ImageOf).
	id := storage.ImageID{Namespace: "ml", Name: "train-uid-train"}

	// The shim asks the agent at the first create too: no spilled image, a fresh start.
	orig := e.mustRun("counter", ctrOpts{labels: podLabels("train", "counter"), annotations: kybernatePod("train", "counter"),
		env: []string{"COUNTER_TCP=1", "COUNTER_INTERVAL=0.05", "COUNTER_TOKEN=1"}})
	orig.counting(t, 5)
	token := orig.token(t)
	if lines := orig.stdout.lines(); lines[0] != "1" {
		t.Fatalf("the first container did not start afresh: first line %q", lines[0])
	}

	resp, err := e.agent.Spill(ctx, &agentv1.SpillRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: "train", Container: "counter"}, Tier: "Disk"})
	if err != nil {
		t.Fatalf("spill to disk: %v", err)
	}
	code := orig.waitExit(t)
	last := orig.count(t)
	t.Logf("spilled to disk: %s, %d bytes (%d stored, key %s); the container stopped (exit %d) at %d", resp.GetLocation(), resp.GetSizeBytes(),
		resp.GetStoredBytes(), resp.GetKeyId(), code, last)
	if resp.GetTier() != "Disk" || resp.GetSizeBytes() == 0 || resp.GetStoredBytes() <= resp.GetSizeBytes() {
		t.Errorf("spill response %v", resp)
	}
	if ok, err := storage.Exists(ctx, e.disk, id); !ok || err != nil {
		t.Fatalf("no image on disk after the spill: %v", err)
	}
	assertEncrypted(t, filepath.Join(diskTierRoot(e.diskDir), "ml", id.Name), token)

	resp, err = e.agent.Spill(ctx, &agentv1.SpillRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: "train", Uid: "uid-train", Container: "counter"}, Tier: "ObjectStore"})
	if err != nil {
		t.Fatalf("spill to the object store: %v", err)
	}
	t.Logf("moved to the object store: %s", resp.GetLocation())
	if ok, err := storage.Exists(ctx, e.s3, id); !ok || err != nil {
		t.Fatalf("no image in SeaweedFS after the move: %v", err)
	}
	if ok, _ := storage.Exists(ctx, e.disk, id); ok {
		t.Error("the disk copy was kept after the move to the object store")
	}

	// The node loses its agent: the kubelet's create of the container is refused (a fresh start
	// would lose the counter), nothing is deleted. The next agent serves the restore.
	e.killAgent(t)
	if _, err := e.run("counter-2", ctrOpts{labels: podLabels("train", "counter"), annotations: kybernatePod("train", "counter")}); err == nil ||
		!strings.Contains(err.Error(), "the container is not created") {
		t.Fatalf("create while the agent is down: %v, want a refusal", err)
	}
	if ok, err := storage.Exists(ctx, e.s3, id); !ok || err != nil {
		t.Fatalf("the image in SeaweedFS is gone after the refused create: %v", err)
	}
	e.startAgent(t)
	e.waitAgent(t)

	// The kubelet creates the container again in the same pod.
	restored := e.mustRun("counter-3", ctrOpts{labels: podLabels("train", "counter"), annotations: kybernatePod("train", "counter"),
		env: []string{"COUNTER_TCP=1", "COUNTER_INTERVAL=0.05", "COUNTER_TOKEN=1"}})
	restored.resumedAt(t, last)
	if got := restored.token(t); got != token {
		t.Errorf("restored counter's token %s, want %s: the process started afresh instead of being restored", got, token)
	}
	for _, tt := range []storage.Tier{e.disk, e.s3} {
		if ok, err := storage.Exists(ctx, tt, id); ok || err != nil {
			t.Errorf("%s still holds the image after the restore (%v)", tt, err)
		}
	}
	if entries, _ := filepath.Glob(filepath.Join(imagesRoot, "ml", "spilled-*")); len(entries) != 0 {
		t.Errorf("decrypted images left in the checkpoint folder: %v", entries)
	}

	// The restored container spills again, beside its stopped earlier attempts (a kubelet
	// keeps the last one): the agent takes the attempt whose task lives. No container named,
	// as the tier policy asks for a pod's only container.
	if _, err := e.agent.Spill(ctx, &agentv1.SpillRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: "train"}, Tier: "Disk"}); err != nil {
		t.Fatalf("spilling the restored container again: %v", err)
	}
	restored.waitExit(t)
	if ok, err := storage.Exists(ctx, e.disk, id); !ok || err != nil {
		t.Errorf("no image on disk after the second spill (%v)", err)
	}
}

// assertEncrypted fails when a file of the stored image holds the counter's token in the clear
// (the plaintext image holds it: it is in the shell's memory).
func assertEncrypted(t *testing.T, dir, token string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n++
		if strings.Contains(string(data), token) {
			t.Errorf("%s holds the token %s in the clear", p, token)
		}
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("image on disk %s: %d files, %v", dir, n, err)
	}
}

// A spilled image changed on disk is refused when the container is created again: the create
// fails with an error naming the file, nothing is deleted, and once the file is as it was the
// next create restores the counter at N+1.
func TestSpilledImageTamperedIsRefused(t *testing.T) {
	e := newTierEnv(t)
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Minute)
	defer cancel()
	id := storage.ImageID{Namespace: "ml", Name: "train-uid-train"}
	opts := ctrOpts{labels: podLabels("train", "counter"), annotations: kybernatePod("train", "counter"), env: []string{"COUNTER_INTERVAL=0.05", "COUNTER_TOKEN=1"}}
	orig := e.mustRun("counter", opts)
	orig.counting(t, 3)
	token := orig.token(t)
	if _, err := e.agent.Spill(ctx, &agentv1.SpillRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: "train", Container: "counter"}, Tier: "Disk"}); err != nil {
		t.Fatalf("spill to disk: %v", err)
	}
	orig.waitExit(t)
	last := orig.count(t)

	// The largest file of the image: CRIU's pages.
	files, err := filepath.Glob(filepath.Join(diskTierRoot(e.diskDir), "ml", id.Name, "files", "*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("files of the image on disk: %v, %v", files, err)
	}
	victim, size := "", int64(-1)
	for _, f := range files {
		if st, err := os.Stat(f); err == nil && st.Size() > size {
			victim, size = f, st.Size()
		}
	}
	good, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), good...)
	bad[len(bad)/2] ^= 0x40
	if err := os.WriteFile(victim, bad, 0o600); err != nil {
		t.Fatal(err)
	}

	_, err = e.run("counter-2", opts)
	if err == nil || !strings.Contains(err.Error(), filepath.Base(victim)) || !strings.Contains(err.Error(), "image corrupt") ||
		!strings.Contains(err.Error(), "the container is not created") {
		t.Fatalf("create from a tampered image: %v; want a refusal naming %s", err, filepath.Base(victim))
	}
	t.Logf("refused: %v", err)
	if ok, err := storage.Exists(ctx, e.disk, id); !ok || err != nil {
		t.Fatalf("the image was deleted after the refusal (%v)", err)
	}
	if entries, _ := filepath.Glob(filepath.Join(imagesRoot, "ml", "spilled-*")); len(entries) != 0 {
		t.Errorf("decrypted files of a refused image in the checkpoint folder: %v", entries)
	}

	if err := os.WriteFile(victim, good, 0o600); err != nil {
		t.Fatal(err)
	}
	restored := e.mustRun("counter-3", opts)
	restored.resumedAt(t, last)
	if got := restored.token(t); got != token {
		t.Errorf("restored counter's token %s, want %s", got, token)
	}
}
