package imagegc

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/component-base/metrics/testutil"
	testingclock "k8s.io/utils/clock/testing"

	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/metrics"
)

const (
	ttl  = time.Hour
	node = "node-a"
)

var now = time.Date(2026, 12, 6, 23, 0, 0, 0, time.UTC)

// fixture is a checkpoint folder and the API objects that refer to its images.
type fixture struct {
	root  string
	pods  []*v1.Pod
	ckpts []*kv1.GPUCheckpoint
}

// img writes an image of namespace ml named name, written by node at created, with size
// bytes of CRIU data; without metadata when node is "-".
func (f *fixture) img(t *testing.T, name, node string, created time.Time, size int) string {
	t.Helper()
	dir := filepath.Join(f.root, "ml", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pages-1.img"), make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	if node == "-" {
		if err := os.Chtimes(dir, created, created); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	if _, err := image.Write(dir, image.Metadata{Pod: image.Pod{Namespace: "ml", Name: name}, Container: image.Container{ID: "c"}, Node: node, Created: created}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func pod(name, state string, phase v1.PodPhase, annotations ...string) *v1.Pod {
	p := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: name, UID: types.UID("uid-" + name),
		Annotations: map[string]string{kv1.AnnotationState: state}}, Status: v1.PodStatus{Phase: phase}}
	for i := 0; i+1 < len(annotations); i += 2 {
		p.Annotations[annotations[i]] = annotations[i+1]
	}
	return p
}

func ckpt(name, podName string, action kv1.CheckpointAction, phase kv1.CheckpointPhase, location, img string) *kv1.GPUCheckpoint {
	return &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: name, UID: types.UID("ck-" + name)},
		Spec:       kv1.GPUCheckpointSpec{PodName: podName, PodUID: "uid-" + podName, Action: action, Image: img},
		Status:     kv1.GPUCheckpointStatus{Phase: phase, ImageLocation: location},
	}
}

func (f *fixture) collector(t *testing.T) (*Collector, *record.FakeRecorder) {
	t.Helper()
	kube := kubefake.NewClientset()
	for _, p := range f.pods {
		if _, err := kube.CoreV1().Pods(p.Namespace).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, ck := range f.ckpts {
		_ = idx.Add(ck)
	}
	rec := record.NewFakeRecorder(100)
	c := New(Config{Root: f.root, TTL: ttl, Interval: time.Minute}, kube, listers.NewGPUCheckpointLister(idx),
		func(n string) bool { return n == node }, node, rec, testingclock.NewFakeClock(now))
	return c, rec
}

func TestScan(t *testing.T) {
	metrics.Register()
	f := &fixture{root: t.TempDir()}
	old, young := now.Add(-2*ttl), now.Add(-ttl/2)

	// Kept, however old: a checkpoint writing it, a migration that may restore it, a pod
	// restoring from it.
	writing := filepath.Join(f.root, "ml", "train-ck-w")
	if err := os.MkdirAll(writing, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(writing, old, old); err != nil {
		t.Fatal(err)
	}
	f.ckpts = append(f.ckpts, ckpt("w", "train", kv1.ActionCheckpoint, kv1.PhaseInProgress, "", ""))
	pending := f.img(t, "pending", node, old, 10)
	f.ckpts = append(f.ckpts, ckpt("p", "orig", kv1.ActionCheckpoint, kv1.PhaseSucceeded, pending, ""))
	f.pods = append(f.pods, pod("orig", string(kv1.PodCheckpointed), v1.PodRunning))
	restoring := f.img(t, "restoring", node, old, 10)
	f.pods = append(f.pods, pod("repl", string(kv1.PodRestoring), v1.PodRunning, kv1.AnnotationRestoreFrom, restoring))
	restoreRunning := f.img(t, "restore-running", node, old, 10)
	f.ckpts = append(f.ckpts, ckpt("r", "repl2", kv1.ActionRestore, kv1.PhaseInProgress, "", restoreRunning))
	// Kept: young and unused; another node's.
	youngImg := f.img(t, "young", node, young, 10)
	othersImg := f.img(t, "others", "node-b", old, 10)

	// Deleted: the restored pod runs (however young), unused and old, unfinished and old, a
	// failed migration's image whose pod is suspended again.
	restored := f.img(t, "restored", node, young, 1000)
	f.pods = append(f.pods, pod("done", string(kv1.PodRunning), v1.PodRunning, kv1.AnnotationRestoreFrom, restored))
	expired := f.img(t, "expired", node, old, 2000)
	unfinished := f.img(t, "unfinished", "-", old, 3000)
	failed := f.img(t, "failed", node, old, 4000)
	f.ckpts = append(f.ckpts, ckpt("f", "back", kv1.ActionCheckpoint, kv1.PhaseSucceeded, failed, ""))
	f.pods = append(f.pods, pod("back", string(kv1.PodSuspended), v1.PodRunning))

	c, rec := f.collector(t)
	got, err := c.Scan(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, func(a, b Deletion) int { return strings.Compare(a.Path, b.Path) })
	want := []Deletion{
		{Path: expired, Reason: ReasonExpired, Bytes: 2000},
		{Path: failed, Reason: ReasonExpired, Bytes: 4000},
		{Path: restored, Reason: ReasonRestored, Bytes: 1000},
		{Path: unfinished, Reason: ReasonExpired, Bytes: 3000},
	}
	slices.SortFunc(want, func(a, b Deletion) int { return strings.Compare(a.Path, b.Path) })
	// metadata.json adds to the sizes of images that have one.
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b int64) bool { return a <= b && b < a+2048 || b <= a && a < b+2048 })); diff != "" {
		t.Errorf("deleted (-want +got):\n%s", diff)
	}
	for _, d := range got {
		if _, err := os.Stat(d.Path); err == nil {
			t.Errorf("%s still there", d.Path)
		}
	}
	for _, p := range []string{writing, pending, restoring, restoreRunning, youngImg, othersImg} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was deleted: %v", p, err)
		}
	}

	events := strings.Join(drain(rec), "\n")
	for _, w := range []string{
		"Normal " + EventImageDeleted + " Deleted checkpoint image " + restored,
		"Deleted checkpoint image of pod ml/expired at " + expired,
		"Deleted checkpoint unfinished image (no metadata.json) at " + unfinished,
	} {
		if !strings.Contains(events, w) {
			t.Errorf("events:\n%s\nwant one containing %q", events, w)
		}
	}
	if v, _ := testutil.GetGaugeMetricValue(metrics.CheckpointImages); v != 5 {
		t.Errorf("checkpoint_images %v, want 5 (the kept images of this agent's node; the writing folder counts)", v)
	}
	if v, _ := testutil.GetGaugeMetricValue(metrics.CheckpointImageBytes); v < 40 || v > 40+4*2048 {
		t.Errorf("checkpoint_image_bytes %v, want the kept images' bytes", v)
	}
	if v, _ := testutil.GetCounterMetricValue(metrics.CheckpointImagesDeleted.WithLabelValues(ReasonExpired)); v < 3 {
		t.Errorf("deleted Expired %v, want at least 3", v)
	}

	// Once the restoring pod runs, its image goes at the next scan.
	f2 := *f
	f2.pods = slices.Clone(f.pods)
	for i, p := range f2.pods {
		if p.Name == "repl" {
			q := p.DeepCopy()
			q.Annotations[kv1.AnnotationState] = string(kv1.PodRunning)
			f2.pods[i] = q
		}
	}
	c2, _ := f2.collector(t)
	got, err = c2.Scan(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Path != restoring || got[0].Reason != ReasonRestored {
		t.Errorf("second scan deleted %v, want %s (Restored)", got, restoring)
	}
}

func drain(rec *record.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}
