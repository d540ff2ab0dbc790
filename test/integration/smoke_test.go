// Package integration holds the tests that run against the real control plane of
// hack/cluster-up.sh; see package framework.
package integration

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"

	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/util"
)

func TestMain(m *testing.M) {
	framework.Main(m)
}

// TestSmoke checks the harness itself: what cluster-up promises is there.
func TestSmoke(t *testing.T) {
	c := framework.Get(t)

	t.Run("CRDsServed", func(t *testing.T) {
		crds := crdsIn(t, filepath.Join(c.Root, "manifests", "crds"))
		if len(crds) < 2 {
			t.Fatalf("manifests/crds holds %d CustomResourceDefinitions, want GPUNode and GPUCheckpoint", len(crds))
		}
		for _, crd := range crds {
			gv := crd.group + "/" + crd.version
			// Established CRDs reach discovery a moment later.
			framework.WaitFor(t.Context(), t, 30*time.Second, "resource "+crd.plural+" in discovery of "+gv, func(context.Context) (bool, error) {
				list, err := c.Client.Discovery().ServerResourcesForGroupVersion(gv)
				if err != nil {
					return false, nil // not served yet
				}
				return slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == crd.plural }), nil
			})
		}
	})

	t.Run("GPUNodesReady", func(t *testing.T) {
		want := max(c.Nodes, 1)
		nodes := framework.WaitForNodesReady(t.Context(), t, c.Client, util.LabelNodeType+"=kwok", want, 30*time.Second)
		if c.Nodes > 0 && len(nodes) != c.Nodes {
			t.Errorf("got %d kwok nodes, want %d", len(nodes), c.Nodes)
		}
		for _, n := range nodes {
			if n.Labels[util.LabelGPUModel] == "" || n.Labels[util.LabelGPUCount] == "" {
				t.Errorf("node %s lacks GPU labels: %v", n.Name, n.Labels)
			}
			if len(n.Spec.Taints) != 0 {
				t.Errorf("node %s has taints %v, want none", n.Name, n.Spec.Taints)
			}
			// Without a node Lease renewed by kwok, the node lifecycle controller
			// marks the node NotReady after its grace period (50 s).
			framework.WaitFor(t.Context(), t, 30*time.Second, "Lease of node "+n.Name, func(ctx context.Context) (bool, error) {
				lease, err := c.Client.CoordinationV1().Leases(v1.NamespaceNodeLease).Get(ctx, n.Name, metav1.GetOptions{})
				if apierrors.IsNotFound(err) {
					return false, nil
				}
				return err == nil && lease.Spec.RenewTime != nil, err
			})
		}
	})

	t.Run("PodScheduledAndRunning", func(t *testing.T) {
		ns := c.CreateNamespace(t)
		pod := util.MakePod().Name("smoke").Namespace(ns).
			Req(map[v1.ResourceName]string{v1.ResourceCPU: "100m", v1.ResourceMemory: "64Mi"}).Obj()
		if _, err := c.Client.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create pod: %v", err)
		}
		got := framework.WaitForPodRunning(t.Context(), t, c.Client, ns, pod.Name, 60*time.Second)

		node, err := c.Client.CoreV1().Nodes().Get(t.Context(), got.Spec.NodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get node %s: %v", got.Spec.NodeName, err)
		}
		if node.Labels[util.LabelNodeType] != "kwok" {
			t.Errorf("pod bound to node %s with labels %v, want a kwok node", node.Name, node.Labels)
		}
		if got.Spec.SchedulerName != v1.DefaultSchedulerName {
			t.Errorf("schedulerName = %q, want %q", got.Spec.SchedulerName, v1.DefaultSchedulerName)
		}
		if got.Status.PodIP == "" {
			t.Errorf("running pod has no IP: %+v", got.Status)
		}

		// Bound by the scheduler, not by anyone setting nodeName: the scheduler
		// reports it as an event.
		framework.WaitFor(t.Context(), t, 30*time.Second, "Scheduled event from default-scheduler", func(ctx context.Context) (bool, error) {
			events, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{
				FieldSelector: "involvedObject.name=" + pod.Name + ",reason=Scheduled",
			})
			if err != nil {
				return false, err
			}
			return slices.ContainsFunc(events.Items, func(e v1.Event) bool {
				return e.ReportingController == v1.DefaultSchedulerName || e.Source.Component == v1.DefaultSchedulerName
			}), nil
		})
	})

	t.Run("PodCompletesOnRequest", func(t *testing.T) {
		ns := c.CreateNamespace(t)
		pod := util.MakePod().Name("done").Namespace(ns).CompleteAfter(time.Second).Obj()
		if _, err := c.Client.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create pod: %v", err)
		}
		framework.WaitForPodPhase(t.Context(), t, c.Client, ns, pod.Name, v1.PodSucceeded, 60*time.Second)
	})

	t.Run("PodDeleted", func(t *testing.T) {
		ns := c.CreateNamespace(t)
		pod := util.MakePod().Name("gone").Namespace(ns).Obj()
		if _, err := c.Client.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create pod: %v", err)
		}
		framework.WaitForPodRunning(t.Context(), t, c.Client, ns, pod.Name, 60*time.Second)
		// A graceful delete: only kwok, playing the kubelet, finishes it.
		if err := c.Client.CoreV1().Pods(ns).Delete(t.Context(), pod.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete pod: %v", err)
		}
		framework.WaitForPodGone(t.Context(), t, c.Client, ns, pod.Name, 30*time.Second)
	})
}

type crdVersion struct{ group, version, plural string }

// crdsIn reads the served versions of the CustomResourceDefinitions in dir.
func crdsIn(t *testing.T, dir string) []crdVersion {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out []crdVersion
	for _, file := range files {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewYAMLOrJSONDecoder(f, 4096)
		for {
			var obj unstructured.Unstructured
			if err := dec.Decode(&obj.Object); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				t.Fatalf("%s: %v", file, err)
			}
			if obj.GetKind() != "CustomResourceDefinition" {
				continue
			}
			group, _, _ := unstructured.NestedString(obj.Object, "spec", "group")
			plural, _, _ := unstructured.NestedString(obj.Object, "spec", "names", "plural")
			versions, _, _ := unstructured.NestedSlice(obj.Object, "spec", "versions")
			for _, v := range versions {
				v, _ := v.(map[string]any)
				if served, _ := v["served"].(bool); served {
					name, _ := v["name"].(string)
					out = append(out, crdVersion{group: group, version: name, plural: plural})
				}
			}
		}
		f.Close()
	}
	if len(out) > 0 && !slices.ContainsFunc(out, func(c crdVersion) bool { return strings.HasSuffix(c.group, "kybernate.io") }) {
		t.Errorf("CRDs in %s, but none in group kybernate.io: %v", dir, out)
	}
	return out
}
