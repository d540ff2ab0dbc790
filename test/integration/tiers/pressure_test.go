package tiers

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/storage"
	"github.com/kybernate/kybernate/nodeagent/tier"
	"github.com/kybernate/kybernate/test/integration/framework"
)

// restartAgent stops the agent and starts it with args.
func restartAgent(t *testing.T, c *framework.Cluster, args []string) {
	t.Helper()
	agent.Stop()
	agent = c.StartSimulatedAgent(t, args...)
}

// withArgs is agentArgs with the flags of set (name=value) replaced or added and those in drop
// left out.
func withArgs(set []string, drop ...string) []string {
	var out []string
	name := func(a string) string { n, _, _ := strings.Cut(a, "="); return n }
	skip := map[string]bool{}
	for _, d := range drop {
		skip[d] = true
	}
	for _, s := range set {
		skip[name(s)] = true
	}
	for _, a := range agentArgs {
		if !skip[name(a)] {
			out = append(out, a)
		}
	}
	return append(out, set...)
}

// gpuNodeEvent waits for an Event with reason on GPUNode node whose message has contains.
func gpuNodeEvent(t *testing.T, c *framework.Cluster, node, reason, contains string) string {
	t.Helper()
	var msg string
	framework.WaitFor(t.Context(), t, time.Minute, "Event "+reason+" on GPUNode "+node, func(ctx context.Context) (bool, error) {
		list, err := c.Client.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + node + ",reason=" + reason})
		if err != nil {
			return false, err
		}
		for _, e := range list.Items {
			if e.InvolvedObject.Kind == "GPUNode" && strings.Contains(e.Message, contains) {
				msg = e.Message
				return true, nil
			}
		}
		return false, nil
	})
	return msg
}

// The disk mark on the real filesystem of the disk tier (statfs), set to 1 byte so that any
// filesystem is above it: without an object store the agent says so on the GPUNode and the
// spilled image stays on disk; with one, the image moves to the object store at once although
// --disk-tier-idle=0 keeps images on disk otherwise.
func TestDiskHighWater(t *testing.T) {
	c, kc := setup(t)
	ns, key := newNamespace(t, c)
	t.Cleanup(func() {
		agent.Stop()
		agent = c.StartSimulatedAgent(t, agentArgs...)
	})
	restartAgent(t, c, withArgs([]string{"--disk-tier-high-water=1", "--disk-tier-idle=0"}, "--object-store-secret"))
	framework.WaitForGPUNodes(t.Context(), t, kc, nodes, gpusPerNode, time.Minute)
	first := boundPod(t, c, kc, ns, "first", 4, 0)
	second := boundPod(t, c, kc, ns, "second", 4, 1)
	spillFirst(t, c, kc, first, second)
	gpuNodeEvent(t, c, "kwok-gpu-4", tier.EventDiskTierHighWater, "no object store is configured")
	disk, err := storage.NewDisk(tier.DiskTierRoot(diskDir))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := storage.Stat(t.Context(), disk, imageID(first), key); err != nil {
		t.Errorf("the spilled image is not on disk above the mark without an object store: %v", err)
	}

	restartAgent(t, c, withArgs([]string{"--disk-tier-high-water=1", "--disk-tier-idle=0"}))
	st := waitStorage(t, kc, first, "in the object store", inTier(kv1.TierObjectStore))
	if !strings.Contains(st.Location, server.Config.Endpoint) {
		t.Errorf("location %q does not name the object store", st.Location)
	}
	waitEvent(t, c, first, tier.EventUploadedToObjectStore, "above its high-water mark")
	if _, err := storage.Stat(t.Context(), objectStore(t), imageID(first), key); err != nil {
		t.Errorf("the object store does not hold the image: %v", err)
	}
}
