package app

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	fwk "k8s.io/kube-scheduler/framework"
	schedconfig "k8s.io/kubernetes/pkg/scheduler/apis/config"
	kubeschedulerscheme "k8s.io/kubernetes/pkg/scheduler/apis/config/scheme"
	schedcache "k8s.io/kubernetes/pkg/scheduler/backend/cache"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	frameworkplugins "k8s.io/kubernetes/pkg/scheduler/framework/plugins"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	"k8s.io/kubernetes/pkg/scheduler/metrics"

	"github.com/kybernate/kybernate/apis/kybernate/connect"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/plugins/gpufit"
)

// stand-in implements every extension point our plugins implement, so the framework places it
// as it would place the real plugin, without the API server the real ones need.
type standIn struct{ name string }

func (s *standIn) Name() string { return s.name }
func (s *standIn) PreFilter(context.Context, fwk.CycleState, *v1.Pod, []fwk.NodeInfo) (*framework.PreFilterResult, *fwk.Status) {
	return nil, nil
}
func (s *standIn) PreFilterExtensions() framework.PreFilterExtensions { return nil }
func (s *standIn) Filter(context.Context, fwk.CycleState, *v1.Pod, fwk.NodeInfo) *fwk.Status {
	return nil
}
func (s *standIn) Score(context.Context, fwk.CycleState, *v1.Pod, fwk.NodeInfo) (int64, *fwk.Status) {
	return 0, nil
}
func (s *standIn) ScoreExtensions() framework.ScoreExtensions                           { return nil }
func (s *standIn) Reserve(context.Context, fwk.CycleState, *v1.Pod, string) *fwk.Status { return nil }
func (s *standIn) Unreserve(context.Context, fwk.CycleState, *v1.Pod, string)           {}
func (s *standIn) Bind(context.Context, fwk.CycleState, *v1.Pod, string) *fwk.Status    { return nil }

type postFilterStandIn struct{ name string }

func (s *postFilterStandIn) Name() string { return s.name }
func (s *postFilterStandIn) PostFilter(context.Context, fwk.CycleState, *v1.Pod, framework.NodeToStatusReader) (*framework.PostFilterResult, *fwk.Status) {
	return nil, nil
}

// The shipped profile, as the real framework assembles it: our plugins at their extension
// points, suspension before DefaultPreemption, every default plugin kept.
func TestShippedProfile(t *testing.T) {
	metrics.Register() // the framework instruments plugins with the scheduler's metrics
	data, err := os.ReadFile(filepath.Join("..", "..", "manifests", "scheduler", "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	codecs := serializer.NewCodecFactory(kubeschedulerscheme.Scheme, serializer.EnableStrict)
	obj, _, err := codecs.UniversalDecoder().Decode(data, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := obj.(*schedconfig.KubeSchedulerConfiguration)
	if len(cfg.Profiles) != 1 {
		t.Fatalf("%d profiles, want 1", len(cfg.Profiles))
	}

	registry := frameworkplugins.NewInTreeRegistry()
	for name, factory := range Plugins(gpupod.NewLedger(), &connect.Shared{}) {
		name := name
		if name == gpufit.Name {
			registry[name] = factory // the real one: it needs nothing but its args
			continue
		}
		if name == "CheckpointPreemption" {
			registry[name] = func(context.Context, runtime.Object, framework.Handle) (framework.Plugin, error) {
				return &postFilterStandIn{name: name}, nil
			}
			continue
		}
		registry[name] = func(context.Context, runtime.Object, framework.Handle) (framework.Plugin, error) {
			return &standIn{name: name}, nil
		}
	}
	client := fake.NewClientset()
	fw, err := frameworkruntime.NewFramework(t.Context(), registry, &cfg.Profiles[0],
		frameworkruntime.WithClientSet(client),
		frameworkruntime.WithInformerFactory(informers.NewSharedInformerFactory(client, 0)),
		frameworkruntime.WithSnapshotSharedLister(schedcache.NewEmptySnapshot()),
	)
	if err != nil {
		t.Fatalf("kube-scheduler rejects the shipped profile: %v", err)
	}
	names := func(ps []schedconfig.Plugin) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Name)
		}
		return out
	}
	plugins := fw.ListPlugins()
	// Suspension runs first; DefaultPreemption only for pods it leaves alone. (DynamicResources
	// follows; it only acts on pods with resource claims.)
	postFilter := names(plugins.PostFilter.Enabled)
	if len(postFilter) < 2 || !cmp.Equal([]string{"CheckpointPreemption", "DefaultPreemption"}, postFilter[:2]) {
		t.Errorf("PostFilter plugins %v, want CheckpointPreemption then DefaultPreemption first", postFilter)
	}
	if diff := cmp.Diff([]string{"GPUShare", "DefaultBinder"}, names(plugins.Bind.Enabled)); diff != "" {
		t.Errorf("Bind plugins (-want +got):\n%s", diff)
	}
	for point, list := range map[string][]schedconfig.Plugin{
		"PreFilter": plugins.PreFilter.Enabled, "Filter": plugins.Filter.Enabled,
		"Score": plugins.Score.Enabled, "Reserve": plugins.Reserve.Enabled,
	} {
		found := false
		for _, p := range list {
			if p.Name == "GPUShare" {
				found = true
				if point == "Score" && p.Weight != 10 {
					t.Errorf("GPUShare score weight %d, want 10", p.Weight)
				}
			}
		}
		if !found {
			t.Errorf("GPUShare is not enabled at %s: %v", point, names(list))
		}
	}
	// The default plugins stay, so non-GPU constraints keep working for our pods; NodeResourcesFit
	// as NodeResourcesFitGPU (the two keep their state under one key: never both).
	for _, p := range plugins.Filter.Enabled {
		if p.Name == "NodeResourcesFit" {
			t.Error("NodeResourcesFit runs beside NodeResourcesFitGPU")
		}
	}
	for _, want := range []string{gpufit.Name, "NodeAffinity", "TaintToleration", "PodTopologySpread", "InterPodAffinity"} {
		found := false
		for _, p := range plugins.Filter.Enabled {
			found = found || p.Name == want
		}
		if !found {
			t.Errorf("default filter %s missing from the profile: %v", want, names(plugins.Filter.Enabled))
		}
	}
}
