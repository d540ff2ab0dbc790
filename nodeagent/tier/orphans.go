package tier

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/nodeagent/metrics"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

// EventOrphanImageDeleted is the Event, on the GPUNode the image's pod last ran on when a
// GPUCheckpoint still says which, about an image deleted because its pod is gone.
const EventOrphanImageDeleted = "OrphanImageDeleted"

// orphanKey is an image in one tier.
type orphanKey struct {
	tier kv1.StorageTier
	id   storage.ImageID
}

// uidSuffix is the pod UID the agent puts at the end of an image's name (imageID).
var uidSuffix = regexp.MustCompile(`-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$`)

// PodUIDOf is the UID of the pod whose image id is: the agent names images <pod>-<UID>. False
// when the name does not end in a UID; such an image is not the agent's and is never swept.
func PodUIDOf(id storage.ImageID) (types.UID, bool) {
	m := uidSuffix.FindStringSubmatch(id.Name)
	if m == nil {
		return "", false
	}
	return types.UID(m[1]), true
}

// References are what keeps an image: the pods that exist (a pod being deleted exists), the
// pods a migration replacement was made from (kybernate.io/migrated-from) and the images
// pods are to be restored from (kybernate.io/restore-from).
type References struct {
	pods        map[types.UID]string
	replaced    map[types.UID]string
	restoreFrom map[string]string
}

// NewReferences collects the references of pods.
func NewReferences(pods []*v1.Pod) References {
	r := References{pods: map[types.UID]string{}, replaced: map[types.UID]string{}, restoreFrom: map[string]string{}}
	for _, p := range pods {
		name := p.Namespace + "/" + p.Name
		r.pods[p.UID] = name
		if s := p.Annotations[kv1.AnnotationMigratedFrom]; s != "" {
			if _, _, uid, err := gpupod.ParseMigratedFrom(s); err == nil && uid != "" {
				r.replaced[uid] = name
			}
		}
		if s := p.Annotations[kv1.AnnotationRestoreFrom]; s != "" {
			r.restoreFrom[s] = name
		}
	}
	return r
}

// Keeps says whether the image id must stay and why; "" when nothing references it.
func (r References) Keeps(id storage.ImageID) string {
	uid, ok := PodUIDOf(id)
	if !ok {
		return "its name does not end in a pod UID"
	}
	if p, ok := r.pods[uid]; ok {
		return "pod " + p + " exists"
	}
	if p, ok := r.replaced[uid]; ok {
		return "pod " + p + " replaces its pod (" + kv1.AnnotationMigratedFrom + ")"
	}
	for from, p := range r.restoreFrom {
		// restore-from names a path or a location: any that mentions the image or its pod.
		if strings.Contains(from, id.Name) || strings.Contains(from, string(uid)) {
			return "pod " + p + " restores from it (" + kv1.AnnotationRestoreFrom + ")"
		}
	}
	return ""
}

// Orphans returns the images of found whose pod is gone for at least grace at now, and
// updates firstSeen (when each image was first found without a reference): images referenced
// again are dropped from it.
func Orphans(found []orphanKey, refs References, firstSeen map[orphanKey]time.Time, now time.Time, grace time.Duration) []orphanKey {
	present := map[orphanKey]bool{}
	var due []orphanKey
	for _, k := range found {
		present[k] = true
		if refs.Keeps(k.id) != "" {
			delete(firstSeen, k)
			continue
		}
		first, ok := firstSeen[k]
		if !ok {
			firstSeen[k] = now
			first = now
		}
		if now.Sub(first) >= grace {
			due = append(due, k)
		}
	}
	for k := range firstSeen {
		if !present[k] {
			delete(firstSeen, k)
		}
	}
	return due
}

// Sweep deletes the images, on disk and in object storage, whose pod no longer exists (deleted
// while no agent ran, or while a move of its image was under way) once they have been so for
// Config.OrphanGrace. The pod cache decides which images are candidates; before one is deleted
// the API server is asked again (the pods of its namespace), since the cache of an agent may
// hold only its own node's pods while a bucket is shared.
func (m *Manager) Sweep(ctx context.Context) error {
	pods, err := m.pods.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("listing pods: %w", err)
	}
	var found []orphanKey
	var errs []error
	for _, t := range m.sweptTiers() {
		ids, err := storage.ListImages(ctx, t.store)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing the images of %s: %w", t.store, err))
			continue
		}
		for _, id := range ids {
			found = append(found, orphanKey{tier: t.tier, id: id})
		}
	}
	m.mu.Lock()
	due := Orphans(found, NewReferences(pods), m.orphans, m.clock.Now(), m.cfg.OrphanGrace)
	waiting := map[kv1.StorageTier]int{}
	for k := range m.orphans {
		waiting[k.tier]++
	}
	m.mu.Unlock()
	for _, t := range []kv1.StorageTier{kv1.TierDisk, kv1.TierObjectStore} {
		metrics.OrphanImages.WithLabelValues(string(t)).Set(float64(waiting[t]))
	}
	live := map[string]References{}
	for _, k := range due {
		if err := m.deleteOrphan(ctx, k, live); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

type sweptTier struct {
	tier  kv1.StorageTier
	store storage.Tier
}

func (m *Manager) sweptTiers() []sweptTier {
	out := []sweptTier{{kv1.TierDisk, m.disk}}
	if m.objects != nil {
		out = append(out, sweptTier{kv1.TierObjectStore, m.objects})
	}
	return out
}

// deleteOrphan deletes one image once the API server confirms that nothing references it.
// live caches the references of the namespaces asked.
func (m *Manager) deleteOrphan(ctx context.Context, k orphanKey, live map[string]References) error {
	refs, ok := live[k.id.Namespace]
	if !ok {
		list, err := m.kube.CoreV1().Pods(k.id.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return fmt.Errorf("image %s: confirming that its pod is gone: %w", k.id, err)
		}
		pods := make([]*v1.Pod, len(list.Items))
		for i := range list.Items {
			pods[i] = &list.Items[i]
		}
		refs = NewReferences(pods)
		live[k.id.Namespace] = refs
	}
	logger := klog.FromContext(ctx).WithValues("image", k.id.String(), "tier", k.tier)
	if why := refs.Keeps(k.id); why != "" {
		logger.V(2).Info("Image kept: the pod cache missed a reference", "why", why)
		m.mu.Lock()
		delete(m.orphans, k)
		m.mu.Unlock()
		return nil
	}
	uid, _ := PodUIDOf(k.id)
	// The pod went away while the agent held its image (a delete during a move): drop it.
	m.mu.Lock()
	if e, held := m.held[uid]; held {
		if e.busy {
			m.mu.Unlock()
			return nil
		}
		delete(m.held, uid)
	}
	m.mu.Unlock()
	t := m.disk
	if k.tier == kv1.TierObjectStore {
		t = m.objects
	}
	if err := storage.Delete(ctx, t, k.id); err != nil {
		return fmt.Errorf("deleting image %s of a pod that is gone from %s: %w", k.id, t, err)
	}
	m.mu.Lock()
	delete(m.orphans, k)
	m.mu.Unlock()
	metrics.OrphanImagesDeleted.WithLabelValues(string(k.tier)).Inc()
	m.publish("")
	node := m.nodeOf(k.id.Namespace, uid)
	logger.Info("Deleted the image of a pod that no longer exists", "podUID", uid, "node", node, "grace", m.cfg.OrphanGrace)
	if node != "" {
		m.recorder.Eventf(gpuNodeRef(node), v1.EventTypeNormal, EventOrphanImageDeleted,
			"Deleted image %s from %s: its pod (UID %s) no longer exists and nothing references the image (kept %v after it was found)",
			k.id, t, uid, m.cfg.OrphanGrace)
	}
	return nil
}

// nodeOf is the served node a GPUCheckpoint of the pod uid last ran on; "" when none says.
func (m *Manager) nodeOf(ns string, uid types.UID) string {
	list, err := m.ckpts.GPUCheckpoints(ns).List(labels.Everything())
	if err != nil {
		return ""
	}
	var node string
	var at time.Time
	for _, ck := range list {
		if types.UID(ck.Spec.PodUID) != uid || ck.Status.NodeName == "" || ck.CreationTimestamp.Time.Before(at) {
			continue
		}
		if _, ok := m.nodes.TierNode(ck.Status.NodeName); ok {
			node, at = ck.Status.NodeName, ck.CreationTimestamp.Time
		}
	}
	return node
}
