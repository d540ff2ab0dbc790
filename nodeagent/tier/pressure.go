package tier

import (
	"context"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/metrics"
)

// Event reasons on the GPUNodes the agent serves (the disk tier is the agent's, not a pod's).
const (
	// EventDiskTierHighWater: the filesystem of the disk tier stays above --disk-tier-high-water
	// and nothing can move (no object store, or every upload failed); nothing is deleted.
	EventDiskTierHighWater = "DiskTierHighWater"
	// EventDiskTierUnderHighWater: it is under the mark again.
	EventDiskTierUnderHighWater = "DiskTierUnderHighWater"
)

// Filesystem reports the size and the used bytes of the filesystem holding path.
type Filesystem func(path string) (size, used int64, err error)

// Statfs is the node's Filesystem: statfs(2).
func Statfs(path string) (size, used int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	bsize := int64(st.Bsize)
	return int64(st.Blocks) * bsize, int64(st.Blocks-st.Bfree) * bsize, nil
}

// SetFilesystem replaces statfs(2) as the source of the disk tier's filesystem usage (tests).
// Call it before Run.
func (m *Manager) SetFilesystem(fs Filesystem) { m.fs = fs }

// Stored is an image in the disk tier with the bytes it takes there.
type Stored struct {
	OnDisk
	Bytes int64
}

// PressurePlan chooses the images to move off the disk so that used bytes come to or under
// mark: the longest on disk first, skipping those whose retry time has not come. It returns
// them in order and whether moving all of them is enough.
func PressurePlan(images []Stored, now time.Time, used, mark int64) ([]types.UID, bool) {
	if used <= mark {
		return nil, true
	}
	order := slices.DeleteFunc(slices.Clone(images), func(i Stored) bool { return now.Before(i.NotBefore) || i.Bytes <= 0 })
	slices.SortStableFunc(order, func(a, b Stored) int {
		return oldestFirst(a.Since, a.UID, b.Since, b.UID)
	})
	var out []types.UID
	for _, i := range order {
		if used <= mark {
			break
		}
		out = append(out, i.UID)
		used -= i.Bytes
	}
	return out, used <= mark
}

// relievePressure moves images from disk to object storage while the disk tier's filesystem
// is above DiskHighWater. Without an object store, or when the uploads cannot bring it under
// the mark, it says so (a Warning Event on the served GPUNodes, once per crossing, and the
// metric) and deletes nothing.
func (m *Manager) relievePressure(ctx context.Context) {
	if !m.cfg.DiskHighWater.IsSet() {
		return
	}
	logger := klog.FromContext(ctx)
	size, used, err := m.fs(m.cfg.DiskDir)
	if err != nil {
		logger.Error(err, "Reading the disk tier's filesystem usage failed", "dir", m.cfg.DiskDir)
		return
	}
	mark := m.cfg.DiskHighWater.Bytes(size)
	metrics.DiskTierHighWaterBytes.Set(float64(mark))
	metrics.DiskTierUsedBytes.Set(float64(used))
	if used <= mark {
		m.setPressure(ctx, false, "")
		return
	}
	if m.objects == nil {
		m.setPressure(ctx, true, fmt.Sprintf("%s used of %s, above the mark of %s (--disk-tier-high-water=%s); no object store is configured (--object-store-secret), so the images stay on disk and nothing is deleted",
			quantity(used), quantity(size), quantity(mark), m.cfg.DiskHighWater))
		return
	}
	m.mu.Lock()
	var disk []Stored
	for uid, e := range m.held {
		if e.tier == kv1.TierDisk && !e.busy {
			disk = append(disk, Stored{OnDisk: OnDisk{UID: uid, Since: e.since, NotBefore: e.notBefore}, Bytes: e.stored})
		}
	}
	m.mu.Unlock()
	plan, _ := PressurePlan(disk, m.clock.Now(), used, mark)
	for _, uid := range plan {
		logger.V(2).Info("Disk tier above its high-water mark: uploading", "pod", uid, "used", used, "highWater", mark)
		if err := m.upload(ctx, uid, "the disk tier is above its high-water mark"); err != nil {
			logger.V(2).Info("Upload to object storage failed; the image stays on disk", "err", err)
		}
	}
	if size, used, err = m.fs(m.cfg.DiskDir); err != nil {
		logger.Error(err, "Reading the disk tier's filesystem usage failed", "dir", m.cfg.DiskDir)
		return
	}
	metrics.DiskTierUsedBytes.Set(float64(used))
	if used > mark {
		m.setPressure(ctx, true, fmt.Sprintf("%s used of %s, above the mark of %s (--disk-tier-high-water=%s) after uploading what could move to %s; the images left stay on disk and nothing is deleted",
			quantity(used), quantity(size), quantity(mark), m.cfg.DiskHighWater, m.objects))
		return
	}
	m.setPressure(ctx, false, "")
}

// setPressure records whether the disk tier stays above its mark: the metric always, an Event
// on every served GPUNode when it changes.
func (m *Manager) setPressure(ctx context.Context, above bool, why string) {
	metrics.DiskTierAboveHighWater.Set(boolFloat(above))
	m.mu.Lock()
	changed := m.pressure != above
	m.pressure = above
	m.mu.Unlock()
	if !changed {
		return
	}
	reason, typ, msg := EventDiskTierUnderHighWater, v1.EventTypeNormal, "The disk tier "+m.cfg.DiskDir+" is under its high-water mark again"
	if above {
		reason, typ, msg = EventDiskTierHighWater, v1.EventTypeWarning, "The disk tier "+m.cfg.DiskDir+" stays above its high-water mark: "+why
		klog.FromContext(ctx).Info("Disk tier above its high-water mark", "dir", m.cfg.DiskDir, "why", why)
	}
	for _, name := range m.nodes.Names() {
		m.recorder.Event(gpuNodeRef(name), typ, reason, msg)
	}
}

// gpuNodeRef names a GPUNode for Events (the agent's recorder knows the core API group only).
func gpuNodeRef(name string) *v1.ObjectReference {
	return &v1.ObjectReference{APIVersion: kv1.SchemeGroupVersion.String(), Kind: "GPUNode", Name: name}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
