package ecosystem

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/restmapper"

	"github.com/kybernate/kybernate/test/helmbin"
	"github.com/kybernate/kybernate/test/integration/framework"
)

// helm install puts every object of the chart (the simulated agent and the activator included)
// into the cluster with the shipped scheduler configuration; helm uninstall takes them all away again and leaves
// the CRDs, which hold the cluster's GPUNodes and GPUCheckpoints.
func TestHelmInstallUninstall(t *testing.T) {
	c := framework.Get(t)
	helm := helmbin.Binary(t, c.Root)
	const release, ns = "kybernate", "kybernate-helm"
	chart := filepath.Join(c.Root, "manifests", "helm", "kybernate")
	flags := []string{"--kubeconfig", c.Kubeconfig, "--namespace", ns}

	out := helmRun(t, helm, append([]string{"install", release, chart, "--create-namespace", "--set", "agent.simulated.enabled=true",
		"--set", "activator.enabled=true"}, flags...)...)
	t.Logf("helm install:\n%s", out)
	manifest := helmRun(t, helm, append([]string{"get", "manifest", release}, flags...)...)
	objs := parseObjects(t, manifest)
	if len(objs) < 15 {
		t.Fatalf("the release has %d objects; want the whole chart", len(objs))
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(discovery.NewDiscoveryClientForConfigOrDie(c.Config)))
	for _, o := range objs {
		if _, err := get(t.Context(), c, mapper, o); err != nil {
			t.Errorf("%s %s/%s of the release: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	// The activator is in the release, bound to its ServiceAccount in the release namespace.
	dep, err := c.Client.AppsV1().Deployments(ns).Get(t.Context(), "kybernate-activator", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the activator's Deployment: %v", err)
	}
	if sa := dep.Spec.Template.Spec.ServiceAccountName; sa != "kybernate-activator" {
		t.Errorf("the activator runs as %q, want kybernate-activator", sa)
	}
	crb, err := c.Client.RbacV1().ClusterRoleBindings().Get(t.Context(), "kybernate-activator", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(crb.Subjects) != 1 || crb.Subjects[0].Namespace != ns {
		t.Errorf("ClusterRoleBinding kybernate-activator binds %+v, want the ServiceAccount in %s", crb.Subjects, ns)
	}
	// The scheduler gets the shipped configurations.
	cm, err := c.Client.CoreV1().ConfigMaps(ns).Get(t.Context(), "kybernate-scheduler-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{"config.yaml", "controllers.yaml"} {
		shipped, err := os.ReadFile(filepath.Join(c.Root, "manifests", "scheduler", file))
		if err != nil {
			t.Fatal(err)
		}
		if got := cm.Data[file]; !bytes.Equal(bytes.TrimSpace([]byte(got)), bytes.TrimSpace(shipped)) {
			t.Errorf("the release's %s is not manifests/scheduler/%s:\n%s", file, file, got)
		}
	}

	helmRun(t, helm, append([]string{"uninstall", release, "--wait", "--timeout", "2m"}, flags...)...)
	for _, o := range objs {
		framework.WaitFor(t.Context(), t, 2*time.Minute, fmt.Sprintf("%s %s gone", o.GetKind(), o.GetName()), func(ctx context.Context) (bool, error) {
			_, err := get(ctx, c, mapper, o)
			if apierrors.IsNotFound(err) {
				return true, nil
			}
			return false, err
		})
	}
	for _, crd := range []string{"gpunodes.kybernate.io", "gpucheckpoints.kybernate.io"} {
		if _, err := c.Dynamic.Resource(crdResource()).Get(t.Context(), crd, metav1.GetOptions{}); err != nil {
			t.Errorf("CRD %s after helm uninstall: %v", crd, err)
		}
	}
	if err := c.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Error(err)
	}
}

func helmRun(t *testing.T, helm string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, helm, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helm %v: %v\n%s%s", args, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

func parseObjects(t *testing.T, stream string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewBufferString(stream), 4096)
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("parsing the release's manifest: %v", err)
		}
		if obj != nil {
			out = append(out, &unstructured.Unstructured{Object: obj})
		}
	}
}

func get(ctx context.Context, c *framework.Cluster, mapper meta.RESTMapper, o *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	gvk := o.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("mapping %s: %w", gvk, err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return c.Dynamic.Resource(m.Resource).Namespace(o.GetNamespace()).Get(ctx, o.GetName(), metav1.GetOptions{})
	}
	return c.Dynamic.Resource(m.Resource).Get(ctx, o.GetName(), metav1.GetOptions{})
}

func crdResource() schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
}
