// Package imagegc deletes the checkpoint images of the agent's --checkpoint-dir that nothing
// needs any more and reports the folder's disk use as metrics.
//
// An image (a folder <root>/<namespace>/<name>) is in use, and never deleted, while
//   - a GPUCheckpoint names it (status.imageLocation, spec.image, or the folder a Checkpoint
//     writes) and is not finished;
//   - the pod a finished Checkpoint was for still exists, is the same pod (UID), and is
//     Checkpointing or Checkpointed: its migration may restore the image yet;
//   - a pod names it in kybernate.io/restore-from and has not been restored from it yet.
//
// An image not in use is deleted at once when a pod restored from it runs (reason Restored,
// an Event on that pod), else when it is older than the TTL (reason Expired, an Event on the
// node that wrote it): the leftovers of failed or abandoned migrations, of pods deleted while
// Checkpointed, and the half-written folders of an agent killed mid-checkpoint. The TTL must
// exceed the longest checkpoint (--dump-timeout) so that a folder being written is never taken
// for a leftover.
//
// With a folder that several agents share, each agent looks after the images its nodes wrote
// (metadata.json names the node) and the folders without metadata.json.
package imagegc

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/controller"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/metrics"
)

// Event reason of a deleted image, and the reasons of deletions (metric label, Event text).
const (
	EventImageDeleted = "CheckpointImageDeleted"

	ReasonRestored = metrics.ImageDeletedRestored
	ReasonExpired  = metrics.ImageDeletedExpired
)

// Config configures a Collector.
type Config struct {
	// Root is the checkpoint folder.
	Root string
	// TTL is how long an image nothing uses is kept.
	TTL time.Duration
	// Interval is the time between two scans of the folder.
	Interval time.Duration
}

// Collector scans the checkpoint folder, deletes images nothing needs and updates the disk
// use metrics.
type Collector struct {
	cfg      Config
	kube     kubernetes.Interface
	ckpts    listers.GPUCheckpointLister
	served   func(node string) bool
	recorder record.EventRecorder
	clock    clock.Clock
	// node is the node Events about images without metadata go to.
	node string
}

// New returns a Collector. served tells the nodes the agent serves; node is the one Events
// about folders without metadata.json name.
func New(cfg Config, kube kubernetes.Interface, ckpts listers.GPUCheckpointLister, served func(string) bool, node string, recorder record.EventRecorder, clk clock.Clock) *Collector {
	return &Collector{cfg: cfg, kube: kube, ckpts: ckpts, served: served, recorder: recorder, clock: clk, node: node}
}

// Run scans every Interval until ctx ends.
func (c *Collector) Run(ctx context.Context) {
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if _, err := c.Scan(ctx); err != nil {
			klog.FromContext(ctx).Error(err, "Scanning checkpoint images failed", "dir", c.cfg.Root)
		}
	}, c.cfg.Interval)
}

// Deletion is one image a scan deleted.
type Deletion struct {
	Path   string
	Reason string
	Bytes  int64
}

// entry is one folder in a namespace folder.
type entry struct {
	ns, path string
	bytes    int64
	meta     *image.Metadata
	// created is metadata.json's time, else the folder's modification time.
	created time.Time
}

// Scan looks at every image once: deletes those nothing needs and sets the metrics. Errors
// of single images are logged and joined; the scan goes on.
func (c *Collector) Scan(ctx context.Context) ([]Deletion, error) {
	entries, err := c.list()
	if err != nil {
		return nil, err
	}
	var total int64
	var count int
	var deleted []Deletion
	var errs []error
	pods := map[string][]*v1.Pod{}
	for _, e := range entries {
		if e.meta != nil && e.meta.Node != "" && !c.served(e.meta.Node) {
			continue // another agent's image in a shared folder
		}
		if _, ok := pods[e.ns]; !ok {
			list, err := c.kube.CoreV1().Pods(e.ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return deleted, fmt.Errorf("listing the pods of namespace %s: %w", e.ns, err)
			}
			pods[e.ns] = podPointers(list.Items)
		}
		reason, restored, err := c.verdict(e, pods[e.ns])
		if err != nil {
			errs = append(errs, err)
		}
		if reason == "" {
			total += e.bytes
			count++
			continue
		}
		if err := os.RemoveAll(e.path); err != nil {
			errs = append(errs, fmt.Errorf("deleting image %s: %w", e.path, err))
			total += e.bytes
			count++
			continue
		}
		deleted = append(deleted, Deletion{Path: e.path, Reason: reason, Bytes: e.bytes})
		c.report(ctx, e, reason, restored)
	}
	metrics.CheckpointImageBytes.Set(float64(total))
	metrics.CheckpointImages.Set(float64(count))
	var st unix.Statfs_t
	if err := unix.Statfs(c.cfg.Root, &st); err == nil {
		metrics.CheckpointDirFilesystemBytes.WithLabelValues("size").Set(float64(st.Blocks) * float64(st.Bsize))
		metrics.CheckpointDirFilesystemBytes.WithLabelValues("available").Set(float64(st.Bavail) * float64(st.Bsize))
	}
	return deleted, errors.Join(errs...)
}

// list returns every folder in every namespace folder under the root.
func (c *Collector) list() ([]entry, error) {
	nss, err := os.ReadDir(c.cfg.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("reading checkpoint folder: %w", err)
	}
	var out []entry
	for _, ns := range nss {
		if !ns.IsDir() {
			continue
		}
		dir := filepath.Join(c.cfg.Root, ns.Name())
		imgs, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("reading checkpoint folder: %w", err)
		}
		for _, img := range imgs {
			info, err := img.Info()
			if err != nil || !img.IsDir() {
				continue // gone meanwhile, or not an image
			}
			e := entry{ns: ns.Name(), path: filepath.Join(dir, img.Name()), created: info.ModTime()}
			if m, err := image.Read(e.path); err == nil {
				e.meta, e.created = &m, m.Created
			}
			e.bytes = du(e.path)
			out = append(out, e)
		}
	}
	return out, nil
}

// verdict says why the image may go ("" when it stays) and, for Restored, the pod that runs.
func (c *Collector) verdict(e entry, pods []*v1.Pod) (string, *v1.Pod, error) {
	cks, err := c.ckpts.GPUCheckpoints(e.ns).List(labels.Everything())
	if err != nil {
		return "", nil, err
	}
	byName := map[string]*v1.Pod{}
	for _, p := range pods {
		byName[p.Name] = p
	}
	for _, ck := range cks {
		if !c.names(ck, e.path) {
			continue
		}
		if ck.Status.Phase != kv1.PhaseSucceeded && ck.Status.Phase != kv1.PhaseFailed {
			return "", nil, nil // in progress
		}
		if ck.Spec.Action == kv1.ActionCheckpoint && ck.Status.Phase == kv1.PhaseSucceeded {
			p := byName[ck.Spec.PodName]
			if p != nil && (ck.Spec.PodUID == "" || types.UID(ck.Spec.PodUID) == p.UID) {
				if s := kv1.PodGPUState(p.Annotations[kv1.AnnotationState]); s == kv1.PodCheckpointing || s == kv1.PodCheckpointed {
					return "", nil, nil // its migration may restore it yet
				}
			}
		}
	}
	var restored *v1.Pod
	for _, p := range pods {
		if p.Annotations[kv1.AnnotationRestoreFrom] != e.path {
			continue
		}
		if !isRestored(p) {
			if p.DeletionTimestamp == nil && p.Status.Phase != v1.PodSucceeded && p.Status.Phase != v1.PodFailed {
				return "", nil, nil // restores from it
			}
			continue
		}
		restored = p
	}
	if restored != nil {
		return ReasonRestored, restored, nil
	}
	if c.clock.Since(e.created) > c.cfg.TTL {
		return ReasonExpired, nil, nil
	}
	return "", nil, nil
}

// names reports whether the GPUCheckpoint names the image at path.
func (c *Collector) names(ck *kv1.GPUCheckpoint, path string) bool {
	return ck.Status.ImageLocation == path || ck.Spec.Image == path ||
		ck.Spec.Action == kv1.ActionCheckpoint && controller.ImageDir(c.cfg.Root, ck) == path
}

// isRestored reports whether the pod runs after its restore: the agent confirmed it
// (kybernate.io/state Running) and the pod is Running.
func isRestored(p *v1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Status.Phase == v1.PodRunning &&
		kv1.PodGPUState(p.Annotations[kv1.AnnotationState]) == kv1.PodRunning
}

func (c *Collector) report(ctx context.Context, e entry, reason string, restored *v1.Pod) {
	metrics.CheckpointImagesDeleted.WithLabelValues(reason).Inc()
	metrics.CheckpointImageBytesDeleted.WithLabelValues(reason).Add(float64(e.bytes))
	size := quantity(e.bytes)
	klog.FromContext(ctx).V(2).Info("Deleted checkpoint image", "image", e.path, "reason", reason, "bytes", e.bytes)
	if restored != nil {
		c.recorder.Eventf(restored, v1.EventTypeNormal, EventImageDeleted, "Deleted checkpoint image %s (%s): the pod restored from it runs", e.path, size)
		return
	}
	node := c.node
	if e.meta != nil && e.meta.Node != "" {
		node = e.meta.Node
	}
	if node == "" {
		return
	}
	var what string
	if e.meta != nil {
		what = fmt.Sprintf("image of pod %s/%s", e.meta.Pod.Namespace, e.meta.Pod.Name)
	} else {
		what = "unfinished image (no " + image.MetadataFile + ")"
	}
	c.recorder.Eventf(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: node, UID: types.UID(node)}}, v1.EventTypeNormal, EventImageDeleted,
		"Deleted checkpoint %s at %s (%s): nothing used it for %s", what, e.path, size, c.cfg.TTL)
}

func podPointers(items []v1.Pod) []*v1.Pod {
	out := make([]*v1.Pod, len(items))
	for i := range items {
		out[i] = &items[i]
	}
	return out
}

// du is the bytes of the regular files under dir.
func du(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // gone meanwhile: count what is there
		}
		if d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

func quantity(b int64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1fGi", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1fMi", float64(b)/(1<<20))
	default:
		return fmt.Sprintf("%dB", b)
	}
}
