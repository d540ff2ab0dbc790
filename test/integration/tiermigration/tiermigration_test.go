// Package tiermigration tests the move of a spilled pod to another node by the migration
// controller, on a real control plane (etcd, kube-apiserver, kwok nodes) with kybernate-scheduler
// and the node agent in --simulate mode (simulated GPUs, processes and checkpoint images) with
// its storage tiers on a real S3-compatible object store (SeaweedFS from the project's hack/
// scripts). A pod suspended on node A is spilled to disk and moved to the object store; when a
// GPU frees on node B, the migration's checkpoint writes its image from the object store
// (verified and decrypted) into the folder both nodes share, a replacement on B restores from
// it and goes on with its progress, the original is deleted and so are its stored images.
package tiermigration

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/sim"
	"github.com/kybernate/kybernate/nodeagent/storage"
	"github.com/kybernate/kybernate/test/ci"
	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/objectstore"
	"github.com/kybernate/kybernate/test/util"
)

const (
	nodes       = 2
	gpusPerNode = 1
	nodeA       = "kwok-gpu-0"
	nodeB       = "kwok-gpu-1"
	low         = "kyb-tiermig-low"
	high        = "kyb-tiermig-high"

	systemNamespace = "kybernate-system"
	storeSecret     = "kybernate-object-store"
	keySecret       = "kybernate-image-key"
)

var (
	server     *objectstore.Server
	skipReason string
)

func TestMain(m *testing.M) {
	os.Exit(objectstore.Main(func(s *objectstore.Server, skip string) int {
		server, skipReason = s, skip
		return framework.RunWithGPUNodes(m, nodes, gpusPerNode)
	}))
}

func gpuPod(ns, name, class string) *util.PodWrapper {
	return util.MakePod().Namespace(ns).Name(name).SchedulerName("kybernate-scheduler").PriorityClassName(class).GPU(1)
}

func state(p *v1.Pod) kv1.PodGPUState {
	s := kv1.PodGPUState(p.Annotations[kv1.AnnotationState])
	if s == "" && p.Annotations[kv1.AnnotationGPUs] != "" {
		s = kv1.PodRunning
	}
	return s
}

// A pod spilled to the object store on node A moves to node B when a GPU frees there: the
// replacement restores from the image the migration wrote from the object store and goes on
// with the progress the pod had when it was spilled; the original and its stored images go.
func TestMigrateSpilledPod(t *testing.T) {
	if server == nil {
		ci.Skip(t, skipReason)
	}
	c := framework.Get(t)
	kc := c.Kybernate(t)
	ctx := t.Context()
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: systemNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	cfg := server.Config
	if _, err := c.Client.CoreV1().Secrets(systemNamespace).Create(ctx, &v1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: storeSecret},
		StringData: map[string]string{storage.SecretEndpoint: cfg.Endpoint, storage.SecretBucket: cfg.Bucket, storage.SecretRegion: cfg.Region,
			storage.SecretPathStyle: "true", "tls": "false", "accessKeyID": cfg.AccessKeyID, "secretAccessKey": cfg.SecretAccessKey},
	}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	ns := c.CreateNamespace(t)
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Secrets(ns).Create(ctx, &v1.Secret{ObjectMeta: metav1.ObjectMeta{Name: keySecret},
		Data: map[string][]byte{storage.SecretKeyField: raw}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	key, err := storage.ParseKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	imageDir := t.TempDir() // the folder both simulated nodes share
	diskDir := t.TempDir()
	// Every suspended pod passes the 1Mi mark: it is spilled at once, and moved to the object
	// store after a second on disk.
	c.StartKybernate(t, map[string]int32{low: 100, high: 10000}, map[string]string{
		"migrationMinWait: 30s":               "migrationMinWait: 1s",
		"migrationBytesPerSecond: 1073741824": "migrationBytesPerSecond: 107374182400",
	},
		"--slots-per-gpu=2", "--checkpoint-dir", imageDir,
		"--parked-memory-high-water=1Mi", "--disk-tier-dir", diskDir, "--disk-tier-idle=1s",
		"--object-store-secret="+systemNamespace+"/"+storeSecret, "--tier-interval=500ms", "--tier-retry-backoff=1s", "--tier-max-backoff=4s",
		"--tier-move-timeout=1m", "--simulate-checkpoint-rate=40G", "--simulate-restore-rate=80G", "--simulate-progress-period=300ms")
	framework.WaitForGPUNodes(ctx, t, kc, nodes, gpusPerNode, time.Minute)

	create := func(p *v1.Pod) {
		t.Helper()
		if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitState := func(name string, s kv1.PodGPUState) *v1.Pod {
		t.Helper()
		return framework.WaitForPod(ctx, t, c.Client, ns, name, time.Minute, "state "+string(s), func(p *v1.Pod) bool { return state(p) == s })
	}
	create(gpuPod(ns, "blocker", low).NodeSelector(v1.LabelHostname, nodeB).Obj())
	waitState("blocker", kv1.PodRunning)
	create(gpuPod(ns, "train", low).Obj())
	if p := waitState("train", kv1.PodRunning); p.Spec.NodeName != nodeA {
		t.Fatalf("train on node %s, want %s (the only free GPU)", p.Spec.NodeName, nodeA)
	}
	framework.WaitForPod(ctx, t, c.Client, ns, "train", time.Minute, "progress 2s", func(p *v1.Pod) bool { return sim.ProgressOf(p) >= 2*time.Second })
	create(gpuPod(ns, "urgent", high).NodeSelector(v1.LabelHostname, nodeA).Obj())
	train := waitState("train", kv1.PodSuspended)
	framework.WaitForPodRunning(ctx, t, c.Client, ns, "urgent", time.Minute)

	// Spilled, then in the object store (the GPUNode says where).
	framework.WaitFor(ctx, t, time.Minute, "train in the object store", func(ctx context.Context) (bool, error) {
		gn, err := kc.KybernateV1alpha1().GPUNodes().Get(ctx, nodeA, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, p := range gn.Status.SuspendedPods {
			if p.Namespace == ns && p.Name == "train" {
				return p.Residency == kv1.InObjectStore, nil
			}
		}
		return false, nil
	})
	s3, err := storage.NewS3(cfg)
	if err != nil {
		t.Fatal(err)
	}
	id := storage.ImageID{Namespace: ns, Name: "train-" + string(train.UID)}
	if _, err := storage.Stat(ctx, s3, id, key); err != nil {
		t.Fatalf("the object store does not hold train's image: %v", err)
	}
	// The progress a spilled pod publishes is the one in its image.
	cur, err := c.Client.CoreV1().Pods(ns).Get(ctx, "train", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	parked := sim.ProgressOf(cur)
	h := c.Record(t, ns)

	if err := c.Client.CoreV1().Pods(ns).Delete(ctx, "blocker", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.WaitForPodGone(ctx, t, c.Client, ns, "train", 2*time.Minute)

	pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var repl *v1.Pod
	for i := range pods.Items {
		if strings.HasPrefix(pods.Items[i].Annotations[kv1.AnnotationMigratedFrom], ns+"/train/") {
			repl = &pods.Items[i]
		}
	}
	if repl == nil {
		t.Fatal("no replacement of train")
	}
	repl = framework.WaitForPod(ctx, t, c.Client, ns, repl.Name, time.Minute, "running with progress", func(p *v1.Pod) bool {
		return state(p) == kv1.PodRunning && sim.ProgressOf(p) > 0
	})
	if repl.Spec.NodeName != nodeB {
		t.Errorf("replacement on node %s, want %s", repl.Spec.NodeName, nodeB)
	}
	if got := sim.ProgressOf(repl); got < parked {
		t.Errorf("replacement's progress %v, want at least %v (train's when spilled)", got, parked)
	}
	dir := repl.Annotations[kv1.AnnotationRestoreFrom]
	if !strings.HasPrefix(dir, imageDir+"/") {
		t.Errorf("replacement restores from %q, want an image under %s", dir, imageDir)
	}
	if _, err := image.Verify(dir); err != nil {
		t.Errorf("the migration's image does not verify: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, sim.RecordFile)); err != nil {
		t.Errorf("the migration's image is not the simulated record: %v", err)
	}
	// The migration's checkpoint came from the tier, not from processes.
	// Events are sent asynchronously: wait for it rather than list once.
	from := ""
	err = framework.Poll(ctx, 30*time.Second, func(ctx context.Context) (bool, error) {
		evs, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=train,reason=Checkpointing"})
		if err != nil {
			return false, err
		}
		for _, e := range evs.Items {
			from = e.Message
		}
		return from != "", nil
	})
	if err != nil || !strings.Contains(from, "from the pod's image in tier ObjectStore") {
		t.Errorf("Checkpointing Event of train %q, want one from the object store (%v)", from, err)
	}
	// Never two copies running: train stays suspended until its replacement runs.
	running := map[string]bool{}
	for _, ch := range h.Pods() {
		p := ch.Pod
		if p.Name != "train" && p.Name != repl.Name {
			continue
		}
		running[p.Name] = state(p) == kv1.PodRunning && p.DeletionTimestamp == nil && ch.Type != "DELETED"
		if running["train"] && running[repl.Name] {
			t.Errorf("%s: train and its replacement run at once", ch.Time.Format("15:04:05.000"))
		}
	}
	for _, err := range h.Errors() {
		t.Error(err)
	}
	// The original is gone, and with it its stored images.
	framework.WaitFor(ctx, t, time.Minute, "train's image gone from the object store", func(ctx context.Context) (bool, error) {
		ok, err := storage.Exists(ctx, s3, id)
		return !ok, err
	})
	if entries, _ := filepath.Glob(filepath.Join(diskDir, "images", ns, "*")); len(entries) != 0 {
		t.Errorf("train's image left on disk: %v", entries)
	}
	t.Logf("train spilled at progress %v, replacement %s on %s at %v", parked, repl.Name, repl.Spec.NodeName, sim.ProgressOf(repl))
}
