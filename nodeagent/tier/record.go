package tier

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/controller"
	"github.com/kybernate/kybernate/nodeagent/metrics"
	"github.com/kybernate/kybernate/nodeagent/podmap"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

func ref(pod *v1.Pod) podmap.PodRef {
	return podmap.PodRef{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}
}

func quantity(n int64) string { return resource.NewQuantity(n, resource.BinarySI).String() }

func uuidList(u []cuda.UUID) string { return strings.Join(uuidStrings(u), ",") }

// location names an image in a tier: its folder on the node, or the object store and prefix.
func (m *Manager) location(t kv1.StorageTier, id storage.ImageID) string {
	if t == kv1.TierObjectStore && m.objects != nil {
		return m.objects.String() + id.Namespace + "/" + id.Name + "/"
	}
	return filepath.Join(DiskTierRoot(m.cfg.DiskDir), id.Namespace, id.Name)
}

// podObject is the pod of an entry, for Events: from the cache, or a reference to it.
func (m *Manager) podObject(e *entry) *v1.Pod {
	if pod, err := m.pods.Pods(e.pod.Namespace).Get(e.pod.Name); err == nil && pod.UID == e.pod.UID {
		return pod
	}
	return &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: e.pod.Namespace, Name: e.pod.Name, UID: e.pod.UID}}
}

// observe counts a move in the metrics; e is nil for a failed one.
func (m *Manager) observe(from, to kv1.StorageTier, start time.Time, e *entry, err error) {
	result := metrics.ResultSuccess
	if err != nil || e == nil {
		result = metrics.ResultFailure
	}
	metrics.TierMoveDuration.WithLabelValues(string(from), string(to), result).Observe(m.clock.Since(start).Seconds())
	if result == metrics.ResultSuccess {
		metrics.TierMoveBytes.WithLabelValues(string(from), string(to)).Add(float64(e.vram))
	}
}

// moveFailed records a failed move out of the entry's tier: the failure count and the next
// try, the metric, a Warning Event and status.storage.lastError. format takes the backoff and
// the error.
func (m *Manager) moveFailed(ctx context.Context, e *entry, pod *v1.Pod, from, to kv1.StorageTier, cause string, err error, format string) {
	m.mu.Lock()
	e.failures++
	wait := Backoff(e.failures, m.cfg.RetryBackoff, m.cfg.MaxBackoff)
	e.notBefore = m.clock.Now().Add(wait)
	e.lastError = fmt.Sprintf("%s: %v", cause, err)
	m.mu.Unlock()
	metrics.TierMoveFailures.WithLabelValues(string(from), string(to), cause).Inc()
	m.recorder.Eventf(pod, v1.EventTypeWarning, EventTierMoveFailed, format, wait, err)
	klog.FromContext(ctx).Info("Tier move failed", "pod", klog.KObj(pod), "from", from, "to", to, "cause", cause, "retryIn", wait, "err", err)
	m.record(ctx, e)
}

// record writes where the entry's memory is into the status.storage of the pod's last
// Succeeded Suspend.
func (m *Manager) record(ctx context.Context, e *entry) {
	m.mu.Lock()
	at := metav1.NewTime(e.since)
	st := &kv1.CheckpointStorage{Tier: e.tier, Location: m.location(e.tier, e.id), SizeBytes: e.size, StoredBytes: e.stored,
		KeyID: e.keyID, LastMoveTime: &at, LastError: truncate(e.lastError, 4096)}
	m.mu.Unlock()
	m.writeStorage(ctx, e, st)
	m.publish(e.node)
}

// clear removes status.storage from the pod's last Suspend once its memory is back on GPUs.
func (m *Manager) clear(ctx context.Context, e *entry) {
	m.writeStorage(ctx, e, nil)
	m.publish(e.node)
}

func (m *Manager) writeStorage(ctx context.Context, e *entry, st *kv1.CheckpointStorage) {
	pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: e.pod.Namespace, Name: e.pod.Name, UID: e.pod.UID}}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		list, err := m.ckpts.GPUCheckpoints(e.pod.Namespace).List(labels.Everything())
		if err != nil {
			return err
		}
		last := controller.LastSuspend(list, pod, e.node)
		if last == nil {
			return nil
		}
		ck, err := m.kyb.KybernateV1alpha1().GPUCheckpoints(last.Namespace).Get(ctx, last.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ck.Status.Storage = st
		_, err = m.kyb.KybernateV1alpha1().GPUCheckpoints(ck.Namespace).UpdateStatus(ctx, ck, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		klog.FromContext(ctx).Info("Writing status.storage failed", "pod", klog.KObj(pod), "err", err)
	}
}

// publish sets the tier gauges (over all nodes of the agent; the node's own agent serves one).
func (m *Manager) publish(string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	count := map[kv1.StorageTier]float64{kv1.TierDisk: 0, kv1.TierObjectStore: 0}
	bytes := map[kv1.StorageTier]float64{kv1.TierDisk: 0, kv1.TierObjectStore: 0}
	for _, e := range m.held {
		count[e.tier]++
		bytes[e.tier] += float64(e.vram)
	}
	for t := range count {
		metrics.TierImages.WithLabelValues(string(t)).Set(count[t])
		metrics.TierBytes.WithLabelValues(string(t)).Set(bytes[t])
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
