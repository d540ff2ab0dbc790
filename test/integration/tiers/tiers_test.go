package tiers

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/sim"
	"github.com/kybernate/kybernate/nodeagent/storage"
	"github.com/kybernate/kybernate/nodeagent/tier"
	"github.com/kybernate/kybernate/test/ci"
	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/util"
)

const (
	systemNamespace = "kybernate-system"
	storeSecret     = "kybernate-object-store"
	keySecret       = "kybernate-image-key"
	// highWater is the agent's mark: one 8Gi pod parked fits, two do not.
	highWater = "10Gi"
	gi        = int64(1) << 30
)

var (
	agentOnce sync.Once
	agentErr  error
	// agent and agentArgs: the running agent and what starts it again.
	agent     *framework.Component
	agentArgs []string
	// diskDir is the agent's --disk-tier-dir.
	diskDir string
)

// setup starts, once for the package, the simulated agent with the storage tiers on and the
// real object store behind them.
func setup(t *testing.T) (*framework.Cluster, versioned.Interface) {
	t.Helper()
	if server == nil {
		ci.Skip(t, skipReason)
	}
	c := framework.Get(t)
	kc := c.Kybernate(t)
	agentOnce.Do(func() { agentErr = startAgent(t, c) })
	if agentErr != nil {
		t.Fatal(agentErr)
	}
	framework.WaitForGPUNodes(t.Context(), t, kc, nodes, gpusPerNode, time.Minute)
	return c, kc
}

func startAgent(t *testing.T, c *framework.Cluster) error {
	ctx := context.Background()
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: systemNamespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	cfg := server.Config
	_, err = c.Client.CoreV1().Secrets(systemNamespace).Create(ctx, &v1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: storeSecret},
		StringData: map[string]string{storage.SecretEndpoint: cfg.Endpoint, storage.SecretBucket: cfg.Bucket, storage.SecretRegion: cfg.Region,
			storage.SecretPathStyle: "true", "tls": "false", "accessKeyID": cfg.AccessKeyID, "secretAccessKey": cfg.SecretAccessKey},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	dir, err := os.MkdirTemp("", "kybernate-disk-tier-")
	if err != nil {
		return err
	}
	diskDir = dir
	agentArgs = []string{"--parked-memory-high-water=" + highWater, "--disk-tier-dir=" + dir, "--disk-tier-idle=2s",
		"--object-store-secret=" + systemNamespace + "/" + storeSecret, "--tier-interval=500ms", "--tier-retry-backoff=1s", "--tier-max-backoff=4s",
		"--tier-move-timeout=1m", "--tier-sweep-interval=1s", "--tier-orphan-grace=2s", "--simulate-checkpoint-rate=20G", "--simulate-restore-rate=40G", "--simulate-progress-period=500ms"}
	agent = c.StartSimulatedAgent(t, agentArgs...)
	return nil
}

// newNamespace creates the test's namespace with its image key.
func newNamespace(t *testing.T, c *framework.Cluster) (string, storage.Key) {
	t.Helper()
	ns := c.CreateNamespace(t)
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	_, err := c.Client.CoreV1().Secrets(ns).Create(t.Context(), &v1.Secret{ObjectMeta: metav1.ObjectMeta{Name: keySecret},
		Data: map[string][]byte{storage.SecretKeyField: raw}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	key, err := storage.ParseKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	return ns, key
}

// boundPod creates an 8Gi pod bound to GPU gpu of node kwok-gpu-<n>, as a scheduler would leave
// it, and waits until it has made progress.
func boundPod(t *testing.T, c *framework.Cluster, kc versioned.Interface, ns, name string, n, gpu int) *v1.Pod {
	t.Helper()
	node := fmt.Sprintf("kwok-gpu-%d", n)
	gn, err := kc.KybernateV1alpha1().GPUNodes().Get(t.Context(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := util.MakePod().Namespace(ns).Name(name).Node(node).GPU(1).GPUMemory("8Gi").
		Annotation(kv1.AnnotationGPUs, gn.Status.GPUs[gpu].UUID).Obj()
	if pod, err = c.Client.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return framework.WaitForPod(t.Context(), t, c.Client, ns, name, time.Minute, "progress", func(p *v1.Pod) bool {
		return sim.ProgressOf(p) >= time.Second
	})
}

// act creates a GPUCheckpoint and waits until it ends.
func act(t *testing.T, kc versioned.Interface, ns, name string, spec kv1.GPUCheckpointSpec) *kv1.GPUCheckpoint {
	t.Helper()
	spec.Reason = kv1.ReasonManual
	ck := &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: spec}
	if _, err := kc.KybernateV1alpha1().GPUCheckpoints(ns).Create(t.Context(), ck, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *kv1.GPUCheckpoint
	framework.WaitFor(t.Context(), t, 2*time.Minute, "GPUCheckpoint "+name+" to end", func(ctx context.Context) (bool, error) {
		var err error
		got, err = kc.KybernateV1alpha1().GPUCheckpoints(ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && (got.Status.Phase == kv1.PhaseSucceeded || got.Status.Phase == kv1.PhaseFailed), err
	})
	return got
}

func suspend(t *testing.T, kc versioned.Interface, pod *v1.Pod) {
	t.Helper()
	ck := act(t, kc, pod.Namespace, "suspend-"+pod.Name, kv1.GPUCheckpointSpec{PodName: pod.Name, PodUID: string(pod.UID), Action: kv1.ActionSuspend})
	if ck.Status.Phase != kv1.PhaseSucceeded {
		t.Fatalf("suspend of %s: %s: %s", pod.Name, ck.Status.Phase, ck.Status.Message)
	}
}

// waitStorage waits until the status.storage of the pod's Suspend says cond, and returns it.
func waitStorage(t *testing.T, kc versioned.Interface, pod *v1.Pod, what string, cond func(*kv1.CheckpointStorage) bool) *kv1.CheckpointStorage {
	t.Helper()
	var st *kv1.CheckpointStorage
	framework.WaitFor(t.Context(), t, time.Minute, "status.storage of "+pod.Name+": "+what, func(ctx context.Context) (bool, error) {
		ck, err := kc.KybernateV1alpha1().GPUCheckpoints(pod.Namespace).Get(ctx, "suspend-"+pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		st = ck.Status.Storage
		return st != nil && cond(st), nil
	})
	return st
}

func inTier(want kv1.StorageTier) func(*kv1.CheckpointStorage) bool {
	return func(st *kv1.CheckpointStorage) bool { return st.Tier == want }
}

// events returns the messages of the pod's Events by reason.
func events(t *testing.T, c *framework.Cluster, pod *v1.Pod) map[string][]string {
	t.Helper()
	list, err := c.Client.CoreV1().Events(pod.Namespace).List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod.Name})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, e := range list.Items {
		out[e.Reason] = append(out[e.Reason], e.Message)
	}
	return out
}

func waitEvent(t *testing.T, c *framework.Cluster, pod *v1.Pod, reason, contains string) string {
	t.Helper()
	var msg string
	framework.WaitFor(t.Context(), t, 30*time.Second, "Event "+reason+" on "+pod.Name, func(context.Context) (bool, error) {
		for _, m := range events(t, c, pod)[reason] {
			if strings.Contains(m, contains) {
				msg = m
				return true, nil
			}
		}
		return false, nil
	})
	return msg
}

func imageID(pod *v1.Pod) storage.ImageID {
	return storage.ImageID{Namespace: pod.Namespace, Name: pod.Name + "-" + string(pod.UID)}
}

func objectStore(t *testing.T) *storage.S3 {
	t.Helper()
	s3, err := storage.NewS3(server.Config)
	if err != nil {
		t.Fatal(err)
	}
	return s3
}

// spillFirst parks first, then second on the same node: the second suspension passes the mark,
// so first, the least recently suspended, is spilled to disk. It returns first's progress when
// it was suspended.
func spillFirst(t *testing.T, c *framework.Cluster, kc versioned.Interface, first, second *v1.Pod) time.Duration {
	t.Helper()
	suspend(t, kc, first)
	p, err := c.Client.CoreV1().Pods(first.Namespace).Get(t.Context(), first.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	parked := sim.ProgressOf(p)
	ck, err := kc.KybernateV1alpha1().GPUCheckpoints(first.Namespace).Get(t.Context(), "suspend-"+first.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st := ck.Status.Storage; st != nil {
		t.Fatalf("%s moved to %s with one pod parked, under the mark", first.Name, st.Tier)
	}
	// The policy spills the least recently suspended pod first, by the time of its suspension
	// (whole seconds): let the second pod's own counter show that time has passed.
	p2 := framework.WaitForPod(t.Context(), t, c.Client, second.Namespace, second.Name, 30*time.Second, "progress", func(*v1.Pod) bool { return true })
	framework.WaitForPod(t.Context(), t, c.Client, second.Namespace, second.Name, 30*time.Second, "two seconds further", func(p *v1.Pod) bool {
		return sim.ProgressOf(p) >= sim.ProgressOf(p2)+2*time.Second
	})
	suspend(t, kc, second)
	st := waitStorage(t, kc, first, "spilled", func(st *kv1.CheckpointStorage) bool { return st.Tier != kv1.TierHostMemory })
	if st.SizeBytes <= 0 || st.StoredBytes <= st.SizeBytes || st.KeyID == "" || st.LastMoveTime == nil {
		t.Errorf("status.storage %+v: want sizes, a key id and a move time", st)
	}
	waitEvent(t, c, first, tier.EventSpilledToDisk, "8Gi of parked GPU memory")
	return parked
}

// resume resumes pod and checks that it continues from its parked progress.
func resume(t *testing.T, c *framework.Cluster, kc versioned.Interface, h *framework.History, pod *v1.Pod, parked time.Duration, from kv1.StorageTier) {
	t.Helper()
	ck := act(t, kc, pod.Namespace, "resume-"+pod.Name, kv1.GPUCheckpointSpec{PodName: pod.Name, PodUID: string(pod.UID), Action: kv1.ActionResume})
	if ck.Status.Phase != kv1.PhaseSucceeded {
		t.Fatalf("resume of %s: %s: %s", pod.Name, ck.Status.Phase, ck.Status.Message)
	}
	if st := ck.Status.Storage; st == nil || st.Tier != from {
		t.Errorf("resume status.storage %+v, want the tier %s it came from", st, from)
	}
	if ck.Status.BytesMoved != 8*gi {
		t.Errorf("resume moved %d bytes, want 8Gi", ck.Status.BytesMoved)
	}
	var steps []string
	for _, s := range ck.Status.Steps {
		steps = append(steps, s.Name)
	}
	want := "Decrypt,Restore,Unlock"
	if from == kv1.TierObjectStore {
		want = "Fetch," + want
	}
	if strings.Join(steps, ",") != want {
		t.Errorf("resume steps %v, want %s", steps, want)
	}
	framework.WaitForPod(t.Context(), t, c.Client, pod.Namespace, pod.Name, 30*time.Second, "progress past the parked one", func(p *v1.Pod) bool {
		return sim.ProgressOf(p) > parked && p.Annotations[kv1.AnnotationState] == string(kv1.PodRunning)
	})
	// The counter stood still while the pod was parked in any tier and never went back.
	if frozen := h.ProgressFrozenWhileSuspended(t, pod.Name); frozen < parked || frozen > parked+time.Second {
		t.Errorf("progress froze at %s while suspended, read as %s right after the suspension", frozen, parked)
	}
	waitEvent(t, c, pod, tier.EventRestoredFromTier, "Restored from "+string(from))
	framework.WaitFor(t.Context(), t, 30*time.Second, "status.storage of the suspend of "+pod.Name+" cleared", func(ctx context.Context) (bool, error) {
		ck, err := kc.KybernateV1alpha1().GPUCheckpoints(pod.Namespace).Get(ctx, "suspend-"+pod.Name, metav1.GetOptions{})
		return err == nil && ck.Status.Storage == nil, err
	})
}

// A pod spilled RAM -> disk when a second suspension passes the mark, moved to the object store
// once idle, and resumed from there: the image is in SeaweedFS, encrypted under the
// namespace's key, the host memory is free, and the progress counter goes on from where it was.
func TestSpillUploadResume(t *testing.T) {
	c, kc := setup(t)
	ns, key := newNamespace(t, c)
	h := c.Record(t, ns)
	first := boundPod(t, c, kc, ns, "first", 0, 0)
	second := boundPod(t, c, kc, ns, "second", 0, 1)

	parked := spillFirst(t, c, kc, first, second)
	st := waitStorage(t, kc, first, "in the object store", inTier(kv1.TierObjectStore))
	if !strings.Contains(st.Location, server.Config.Endpoint) || !strings.Contains(st.Location, imageID(first).Name) {
		t.Errorf("location %q does not name the object store and the image", st.Location)
	}
	waitEvent(t, c, first, tier.EventUploadedToObjectStore, "disk copy deleted")
	s3 := objectStore(t)
	m, err := storage.Stat(t.Context(), s3, imageID(first), key)
	if err != nil {
		t.Fatalf("the object store does not hold the image: %v", err)
	}
	if m.Encryption.KeyID != key.ID() || m.Size() != st.SizeBytes {
		t.Errorf("manifest key %s size %d, status says key %s size %d", m.Encryption.KeyID, m.Size(), st.KeyID, st.SizeBytes)
	}
	// Only the second pod is parked in host memory now; the GPUNode lists the first in the
	// object store.
	framework.WaitFor(t.Context(), t, 30*time.Second, "GPUNode kwok-gpu-0: second parked in host memory, first in the object store", func(ctx context.Context) (bool, error) {
		gn, err := kc.KybernateV1alpha1().GPUNodes().Get(ctx, "kwok-gpu-0", metav1.GetOptions{})
		if err != nil || gn.Status.HostMemory.ParkedBytes != 8*gi {
			return false, err
		}
		where := map[string]kv1.Residency{}
		for _, p := range gn.Status.SuspendedPods {
			if p.Namespace == ns {
				where[p.Name] = p.Residency
			}
		}
		return len(where) == 2 && where["second"] == kv1.Suspended && where["first"] == kv1.InObjectStore, nil
	})
	ck, err := kc.KybernateV1alpha1().GPUCheckpoints(ns).Get(t.Context(), "suspend-second", metav1.GetOptions{})
	if err != nil || ck.Status.Storage != nil {
		t.Errorf("the second pod, under the mark, has status.storage %+v (%v), want none", ck.Status.Storage, err)
	}

	resume(t, c, kc, h, first, parked, kv1.TierObjectStore)
	if _, err := storage.Stat(t.Context(), s3, imageID(first), key); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the image is still in the object store after the resume: %v", err)
	}
}

// A tampered object in the object store: the resume is refused naming the file, the pod stays
// suspended, and nothing is deleted.
func TestTamperedObjectRefused(t *testing.T) {
	c, kc := setup(t)
	ns, key := newNamespace(t, c)
	victim := boundPod(t, c, kc, ns, "victim", 1, 0)
	other := boundPod(t, c, kc, ns, "other", 1, 1)
	spillFirst(t, c, kc, victim, other)
	waitStorage(t, kc, victim, "in the object store", inTier(kv1.TierObjectStore))

	s3 := objectStore(t)
	files := imageID(victim).Namespace + "/" + imageID(victim).Name + "/files/"
	keys, err := s3.List(t.Context(), files)
	if err != nil || len(keys) == 0 {
		t.Fatalf("no objects under %s: %v", files, err)
	}
	object := keys[0]
	rc, err := s3.Get(t.Context(), object)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	sum := sha256.Sum256(data)
	if err := s3.Put(t.Context(), object, bytes.NewReader(data), int64(len(data)), hex.EncodeToString(sum[:])); err != nil {
		t.Fatal(err)
	}

	ck := act(t, kc, ns, "resume-victim", kv1.GPUCheckpointSpec{PodName: "victim", PodUID: string(victim.UID), Action: kv1.ActionResume})
	file := strings.TrimPrefix(object, files)
	cond := meta.FindStatusCondition(ck.Status.Conditions, kv1.CheckpointComplete)
	if ck.Status.Phase != kv1.PhaseFailed || cond == nil || cond.Reason != "ImageCorrupt" || !strings.Contains(ck.Status.Message, file) {
		t.Fatalf("resume of a tampered image: %s (%+v): %s; want Failed, ImageCorrupt, naming %s", ck.Status.Phase, cond, ck.Status.Message, file)
	}
	p, err := c.Client.CoreV1().Pods(ns).Get(t.Context(), "victim", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s := p.Annotations[kv1.AnnotationState]; s != string(kv1.PodSuspended) {
		t.Errorf("state %s after the refused resume, want Suspended", s)
	}
	waitEvent(t, c, victim, tier.EventTierMoveFailed, file)
	st := waitStorage(t, kc, victim, "the error", func(st *kv1.CheckpointStorage) bool { return st.LastError != "" })
	if st.Tier != kv1.TierObjectStore || !strings.Contains(st.LastError, "ImageCorrupt") {
		t.Errorf("status.storage %+v, want ObjectStore with the ImageCorrupt error", st)
	}
	if _, err := storage.Stat(t.Context(), s3, imageID(victim), key); err != nil {
		t.Errorf("the image's manifest is gone from the object store: %v", err)
	}
	if _, err := s3.Stat(t.Context(), object); err != nil {
		t.Errorf("the tampered object was deleted: %v", err)
	}
}

// An agent killed with SIGKILL while a pod is in the object store: the next agent takes the pod
// over from its status.storage and resumes it from there.
func TestAgentRestart(t *testing.T) {
	c, kc := setup(t)
	ns, _ := newNamespace(t, c)
	h := c.Record(t, ns)
	first := boundPod(t, c, kc, ns, "first", 1, 0)
	second := boundPod(t, c, kc, ns, "second", 1, 1)
	parked := spillFirst(t, c, kc, first, second)
	waitStorage(t, kc, first, "in the object store", inTier(kv1.TierObjectStore))
	agent.Kill()
	agent = c.StartSimulatedAgent(t, agentArgs...)
	framework.WaitForGPUNodes(t.Context(), t, kc, nodes, gpusPerNode, time.Minute)
	resume(t, c, kc, h, first, parked, kv1.TierObjectStore)
}

// With the object store down the spilled image stays on disk (the upload fails, says so and is
// retried), and the pod resumes from disk. Stops the object store: the last test.
func TestObjectStoreDown(t *testing.T) {
	c, kc := setup(t)
	ns, _ := newNamespace(t, c)
	h := c.Record(t, ns)
	first := boundPod(t, c, kc, ns, "first", 2, 0)
	second := boundPod(t, c, kc, ns, "second", 2, 1)
	if err := server.Stop(); err != nil {
		t.Fatal(err)
	}
	parked := spillFirst(t, c, kc, first, second)
	st := waitStorage(t, kc, first, "upload failed", func(st *kv1.CheckpointStorage) bool { return strings.Contains(st.LastError, "UploadFailed") })
	if st.Tier != kv1.TierDisk {
		t.Fatalf("status.storage %+v with the object store down, want Disk", st)
	}
	waitEvent(t, c, first, tier.EventTierMoveFailed, "the image stays on disk")
	resume(t, c, kc, h, first, parked, kv1.TierDisk)
}
