// Package chart tests the Helm chart manifests/helm/kybernate with the helm binary that
// hack/build-helm.sh builds from the Go module proxy: helm lint, helm template against golden
// files (go test ./test/chart -update rewrites them), and that the chart and the kustomize
// manifests render the same objects. helm install on a cluster is in test/integration/ecosystem.
package chart

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kybernate/kybernate/test/helmbin"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const chartPath = "manifests/helm/kybernate"

// cases are the value sets the golden files pin, by golden file name.
var cases = map[string][]string{
	"default": nil,
	// Everything optional on: the namespace object, the simulated agent, the activator, ServiceMonitors, JSON logs.
	"everything": {"--set", "namespace.create=true", "--set", "agent.simulated.enabled=true", "--set", "activator.enabled=true",
		"--set", "activator.logFormat=json", "--set", "activator.backendH2C=true", "--set", "activator.clusterDomain=example.internal",
		"--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.labels.release=prometheus",
		"--set", "scheduler.logFormat=json", "--set", "agent.logFormat=json"},
	// A registry of one's own, other args, node placement; no metrics, no RuntimeClass or PriorityClasses.
	"custom": {"--set", "scheduler.image.repository=registry.example.com/kybernate-scheduler", "--set", "scheduler.image.tag=v0.1.0",
		"--set", "agent.image.repository=registry.example.com/kybernate-agent", "--set", "agent.image.tag=v0.1.0",
		"--set", "scheduler.extraArgs={--kube-api-qps=100}", "--set", "agent.slotsPerGPU=4", "--set", "agent.checkpointDir=", "--set", "agent.thpWindow=true",
		"--set", "agent.nodeSelector.pool=gpu", "--set", "agent.tolerations[0].key=dedicated", "--set", "agent.tolerations[0].operator=Exists",
		"--set", "metrics.enabled=false", "--set", "runtimeClass.create=false", "--set", "priorityClasses.create=false",
		"--set-string", "agent.resources.limits.memory=1Gi",
		"--set", "activator.enabled=true", "--set", "activator.image.repository=registry.example.com/kybernate-scheduler",
		"--set", "activator.image.tag=v0.1.0", "--set", "activator.maxHeldRequests=50", "--set", "activator.holdTimeout=30s",
		"--set", "activator.port=9000", "--set", "activator.metricsPort=9500", "--set", "activator.priorityClassName=system-cluster-critical",
		"--set", "activator.extraArgs={--interval=2s}"},
}

func TestLint(t *testing.T) {
	helm, root := helmBinary(t)
	for name, args := range cases {
		t.Run(name, func(t *testing.T) {
			out, err := run(root, helm, append([]string{"lint", "--strict", chartPath}, args...)...)
			if err != nil {
				t.Fatalf("helm lint: %v\n%s", err, out)
			}
		})
	}
}

func TestTemplateGolden(t *testing.T) {
	helm, root := helmBinary(t)
	for name, args := range cases {
		t.Run(name, func(t *testing.T) {
			// Without the CRDs: they are generated (make generate), and the kustomize comparison
			// checks that the chart ships them as they are.
			got := template(t, helm, root, args...)
			golden := filepath.Join("testdata", name+".yaml")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (go test ./test/chart -update writes it)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("helm template %v differs from %s (-want +got); if the change is meant, go test ./test/chart -update:\n%s", args, golden, diff)
			}
		})
	}
}

// template renders the chart as release kybernate in namespace kybernate-system; with
// --include-crds among args with its CRDs.
func template(t *testing.T, helm, root string, args ...string) string {
	t.Helper()
	out, err := run(root, helm, append([]string{"template", "kybernate", chartPath, "--namespace", "kybernate-system"}, args...)...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	return out
}

// helmBinary returns helm and the repository root.
func helmBinary(t *testing.T) (string, string) {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return helmbin.Binary(t, root), root
}

// run runs a command in dir; stdout is returned alone on success, with stderr on failure.
func run(dir, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}
