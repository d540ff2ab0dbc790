package chart

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// Labels Helm puts on every object of a release; kustomize puts none.
var helmLabels = []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"}

// kustomize names the scheduler's ConfigMap after a hash of its data; the chart rolls the
// pods with an annotation instead.
var hashedConfigMap = regexp.MustCompile(`^(kybernate-scheduler-config)-[a-z0-9]{10}$`)

// The chart with its defaults (and the namespace object, which `helm install
// --create-namespace` makes instead) installs what `kubectl apply -k manifests/` installs,
// plus a metrics Service per component.
func TestSameObjectsAsKustomize(t *testing.T) {
	helm, root := helmBinary(t)
	compare(t, kustomize(t, root, "manifests"),
		parse(t, template(t, helm, root, "--include-crds", "--set", "namespace.create=true")),
		"Service/kybernate-system/kybernate-scheduler-metrics", "Service/kybernate-system/kybernate-agent-metrics")
}

// The simulated agent of manifests/agent/simulated is the chart's agent.simulated.
func TestSimulatedAgentSameAsKustomize(t *testing.T) {
	helm, root := helmBinary(t)
	want := kustomize(t, root, "manifests/agent/simulated")
	got := parse(t, template(t, helm, root, "--set", "agent.simulated.enabled=true"))
	for key := range got {
		if _, ok := want[key]; !ok {
			delete(got, key) // the rest of the chart
		}
	}
	compare(t, want, got)
}

// kybernate-activator of manifests/activator is the chart's activator; the defaults leave it
// out, as manifests/ does (TestSameObjectsAsKustomize).
func TestActivatorSameAsKustomize(t *testing.T) {
	helm, root := helmBinary(t)
	want := kustomize(t, root, "manifests/activator")
	got := parse(t, template(t, helm, root, "--set", "activator.enabled=true"))
	for key := range got {
		if _, ok := want[key]; !ok {
			delete(got, key) // the rest of the chart
		}
	}
	compare(t, want, got)
}

// compare fails unless want and got hold the same objects; got may have the extra ones named.
func compare(t *testing.T, want, got map[string]map[string]any, extra ...string) {
	t.Helper()
	for key, w := range want {
		g, ok := got[key]
		if !ok {
			t.Errorf("%s: rendered by kustomize, not by the chart", key)
			continue
		}
		if diff := cmp.Diff(w, g); diff != "" {
			t.Errorf("%s differs (-kustomize +helm):\n%s", key, diff)
		}
	}
	for key := range got {
		if _, ok := want[key]; !ok && !slices.Contains(extra, key) {
			t.Errorf("%s: rendered by the chart, not by kustomize", key)
		}
	}
	for _, key := range extra {
		if _, ok := got[key]; !ok {
			t.Errorf("%s: not rendered by the chart", key)
		}
	}
}

// kustomize builds a kustomization folder with the kustomize library (what kubectl apply -k runs).
func kustomize(t *testing.T, root, dir string) map[string]map[string]any {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(root, dir))
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	return parse(t, string(out))
}

// parse reads a YAML stream into normalized objects by kind/namespace/name.
func parse(t *testing.T, stream string) map[string]map[string]any {
	t.Helper()
	objs := map[string]map[string]any{}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewBufferString(stream), 4096)
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("parsing rendered objects: %v", err)
		}
		if obj == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		normalize(u)
		key := fmt.Sprintf("%s/%s/%s", u.GetKind(), u.GetNamespace(), u.GetName())
		if _, dup := objs[key]; dup {
			t.Errorf("%s rendered twice", key)
		}
		objs[key] = u.Object
	}
	return objs
}

// normalize takes out what only says which tool rendered the object.
func normalize(u *unstructured.Unstructured) {
	labels := u.GetLabels()
	for _, l := range helmLabels {
		delete(labels, l)
	}
	u.SetLabels(labels)
	if len(labels) == 0 {
		unstructured.RemoveNestedField(u.Object, "metadata", "labels")
	}
	if u.GetKind() == "ConfigMap" {
		u.SetName(hashedConfigMap.ReplaceAllString(u.GetName(), "$1"))
	}
	unstructured.RemoveNestedField(u.Object, "spec", "template", "metadata", "annotations", "checksum/config")
	if a, _, _ := unstructured.NestedMap(u.Object, "spec", "template", "metadata", "annotations"); len(a) == 0 {
		unstructured.RemoveNestedField(u.Object, "spec", "template", "metadata", "annotations")
	}
	volumes, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "volumes")
	for _, v := range volumes {
		if cm, ok := v.(map[string]any)["configMap"].(map[string]any); ok {
			if name, ok := cm["name"].(string); ok {
				cm["name"] = hashedConfigMap.ReplaceAllString(name, "$1")
			}
		}
	}
	if len(volumes) > 0 {
		_ = unstructured.SetNestedSlice(u.Object, volumes, "spec", "template", "spec", "volumes")
	}
	if data, ok, _ := unstructured.NestedStringMap(u.Object, "data"); ok {
		for k, v := range data {
			data[k] = strings.TrimRight(v, "\n ") + "\n"
		}
		_ = unstructured.SetNestedStringMap(u.Object, data, "data")
	}
}
