package tiers

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/storage"
	"github.com/kybernate/kybernate/nodeagent/tier"
	"github.com/kybernate/kybernate/test/integration/framework"
)

// A pod spilled to disk and the object store and deleted while the agent is down: the next
// agent's sweep deletes its images from the disk tier and the bucket after --tier-orphan-grace,
// and keeps the image of a spilled pod that still exists.
func TestOrphanedImagesSwept(t *testing.T) {
	c, kc := setup(t)
	ns, key := newNamespace(t, c)
	gone := boundPod(t, c, kc, ns, "gone", 3, 0)
	stays := boundPod(t, c, kc, ns, "stays", 3, 1)
	spillFirst(t, c, kc, gone, stays)
	waitStorage(t, kc, gone, "in the object store", inTier(kv1.TierObjectStore))
	// A third suspension passes the mark again: stays, now the least recently suspended, spills.
	third := boundPod(t, c, kc, ns, "third", 3, 0)
	suspend(t, kc, third)
	waitStorage(t, kc, stays, "spilled", func(st *kv1.CheckpointStorage) bool { return st.Tier != kv1.TierHostMemory })

	agent.Kill()
	// As an agent killed between an upload and deleting the disk copy leaves it: the deleted
	// pod's image in both tiers.
	disk, err := storage.NewDisk(tier.DiskTierRoot(diskDir))
	if err != nil {
		t.Fatal(err)
	}
	s3 := objectStore(t)
	id := imageID(gone)
	if _, err := storage.Copy(t.Context(), s3, disk, id); err != nil {
		t.Fatal(err)
	}
	for _, tr := range []storage.Tier{disk, s3} {
		if _, err := storage.Stat(t.Context(), tr, id, key); err != nil {
			t.Fatalf("before the restart %s lacks the image of the pod to delete: %v", tr, err)
		}
	}
	zero := int64(0)
	if err := c.Client.CoreV1().Pods(ns).Delete(t.Context(), gone.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	framework.WaitFor(t.Context(), t, 30*time.Second, "pod gone deleted", func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().Pods(ns).Get(ctx, gone.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})

	agent = c.StartSimulatedAgent(t, agentArgs...)
	framework.WaitFor(t.Context(), t, time.Minute, "the images of the deleted pod swept from disk and the object store", func(ctx context.Context) (bool, error) {
		for _, tr := range []storage.Tier{disk, s3} {
			ids, err := storage.ListImages(ctx, tr)
			if err != nil || slices.Contains(ids, id) {
				return false, err
			}
		}
		return true, nil
	})
	// The same sweeps saw the image of stays, whose pod exists: it is where status.storage says.
	st := waitStorage(t, kc, stays, "spilled", func(st *kv1.CheckpointStorage) bool { return st.Tier != kv1.TierHostMemory })
	where := storage.Tier(disk)
	if st.Tier == kv1.TierObjectStore {
		where = s3
	}
	if _, err := storage.Stat(t.Context(), where, imageID(stays), key); err != nil {
		t.Errorf("the image of the pod that exists is gone from %s: %v", st.Tier, err)
	}
	framework.WaitFor(t.Context(), t, 30*time.Second, "Event "+tier.EventOrphanImageDeleted+" on GPUNode kwok-gpu-3", func(ctx context.Context) (bool, error) {
		list, err := c.Client.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=kwok-gpu-3,reason=" + tier.EventOrphanImageDeleted})
		if err != nil {
			return false, err
		}
		n := 0
		for _, e := range list.Items {
			if strings.Contains(e.Message, id.String()) && e.InvolvedObject.Kind == "GPUNode" {
				n++
			}
		}
		return n >= 1, nil
	})
	p, err := c.Client.CoreV1().Pods(ns).Get(t.Context(), stays.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s := p.Annotations[kv1.AnnotationState]; s != string(kv1.PodSuspended) {
		t.Errorf("the pod that exists is %s after the sweep, want Suspended", s)
	}
}
