package gpufit

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/apis/config"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	plfeature "k8s.io/kubernetes/pkg/scheduler/framework/plugins/feature"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/noderesources"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// node has 4 CPUs and advertises gpus kybernate.io/gpu (none: the agent did not patch it yet).
func node(gpus string) *framework.NodeInfo {
	alloc := v1.ResourceList{v1.ResourceCPU: resource.MustParse("4"), v1.ResourceMemory: resource.MustParse("8Gi"),
		v1.ResourcePods: resource.MustParse("110")}
	if gpus != "" {
		alloc[kv1.ResourceGPU] = resource.MustParse(gpus)
	}
	ni := framework.NewNodeInfo()
	ni.SetNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Status: v1.NodeStatus{Allocatable: alloc, Capacity: alloc}})
	return ni
}

func pod(cpu string, gpus string) *v1.Pod {
	r := v1.ResourceRequirements{Requests: v1.ResourceList{v1.ResourceCPU: resource.MustParse(cpu)}}
	if gpus != "" {
		r.Limits = v1.ResourceList{kv1.ResourceGPU: resource.MustParse(gpus)}
		r.Requests[kv1.ResourceGPU] = resource.MustParse(gpus)
	}
	return &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u"},
		Spec: v1.PodSpec{Containers: []v1.Container{{Name: "c", Resources: r}}}}
}

func newFit(t testing.TB) *Fit {
	t.Helper()
	f, err := NewWithArgs(context.Background(), defaultArgs(), nil, plfeature.Features{})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func inTree(t testing.TB) framework.Plugin {
	t.Helper()
	p, err := noderesources.NewFit(context.Background(), defaultArgs(), nil, plfeature.Features{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type filterer interface {
	framework.PreFilterPlugin
	framework.FilterPlugin
}

func filter(t testing.TB, p filterer, pod *v1.Pod, ni *framework.NodeInfo) *fwk.Status {
	t.Helper()
	state := framework.NewCycleState()
	if _, s := p.PreFilter(context.Background(), state, pod, []fwk.NodeInfo{ni}); !s.IsSuccess() {
		t.Fatalf("PreFilter: %v", s)
	}
	return p.Filter(context.Background(), state, pod, ni)
}

// The in-tree plugin rejects a GPU pod on a node that advertises too few kybernate.io/gpu; this
// one leaves that to GPUShare and checks the rest as before.
func TestFilter(t *testing.T) {
	f := newFit(t)
	for _, tc := range []struct {
		name        string
		pod         *v1.Pod
		node        *framework.NodeInfo
		inTree, fit string // "" for success, else a reason the status holds
	}{
		{"GPU pod, node without kybernate.io/gpu", pod("1", "1"), node(""), "Insufficient kybernate.io/gpu", ""},
		{"GPU pod, node with kybernate.io/gpu", pod("1", "1"), node("16"), "", ""},
		{"GPU pod, too much CPU", pod("8", "1"), node("16"), "Insufficient cpu", "Insufficient cpu"},
		{"pod without GPU, too much CPU", pod("8", ""), node(""), "Insufficient cpu", "Insufficient cpu"},
		{"pod without GPU", pod("1", ""), node(""), "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check := func(who string, s *fwk.Status, want string) {
				if want == "" {
					if !s.IsSuccess() {
						t.Errorf("%s: %v, want success", who, s)
					}
					return
				}
				if s.IsSuccess() || !strings.Contains(strings.Join(s.Reasons(), ";"), want) {
					t.Errorf("%s: %v, want %q", who, s, want)
				}
			}
			check("in-tree", filter(t, inTree(t).(filterer), tc.pod, tc.node), tc.inTree)
			check(Name, filter(t, f, tc.pod, tc.node), tc.fit)
		})
	}
}

// The scheduler's pod is shared: the plugin must not change it.
func TestPreFilterKeepsThePod(t *testing.T) {
	p := pod("1", "1")
	filter(t, newFit(t), p, node(""))
	if _, ok := p.Spec.Containers[0].Resources.Requests[kv1.ResourceGPU]; !ok {
		t.Error("PreFilter removed kybernate.io/gpu from the scheduler's pod")
	}
	if got := withoutGPU(pod("1", "")); got == nil {
		t.Error("withoutGPU returned nil")
	}
	noGPU := pod("1", "")
	if withoutGPU(noGPU) != noGPU {
		t.Error("a pod without kybernate.io/gpu was copied")
	}
}

// TestArgs: the plugin takes NodeResourcesFit's args, defaulted and validated as
// kube-scheduler does them; bad args are refused with the field they name.
func TestArgs(t *testing.T) {
	for _, tt := range []struct {
		name    string
		obj     runtime.Object
		want    *config.NodeResourcesFitArgs
		wantErr string
	}{
		{name: "none: NodeResourcesFit's defaults", obj: nil, want: defaultArgs()},
		{name: "empty", obj: &runtime.Unknown{Raw: []byte(`{}`)}, want: defaultArgs()},
		{name: "most allocated on memory, a resource ignored", obj: &runtime.Unknown{Raw: []byte(
			`{"apiVersion":"kubescheduler.config.k8s.io/v1","kind":"NodeResourcesFitArgs","ignoredResources":["example.com/fpga"],` +
				`"scoringStrategy":{"type":"MostAllocated","resources":[{"name":"memory","weight":2}]}}`)},
			want: &config.NodeResourcesFitArgs{IgnoredResources: []string{"example.com/fpga"}, ScoringStrategy: &config.ScoringStrategy{
				Type: config.MostAllocated, Resources: []config.ResourceSpec{{Name: "memory", Weight: 2}}}}},
		{name: "yaml", obj: &runtime.Unknown{Raw: []byte("scoringStrategy:\n  type: MostAllocated\n")},
			want: &config.NodeResourcesFitArgs{ScoringStrategy: &config.ScoringStrategy{
				Type: config.MostAllocated, Resources: defaultArgs().ScoringStrategy.Resources}}},
		{name: "unknown field", obj: &runtime.Unknown{Raw: []byte(`{"ignoredResourcez":["x"]}`)}, wantErr: "unknown field"},
		{name: "another kind", obj: &runtime.Unknown{Raw: []byte(`{"kind":"GPUShareArgs"}`)}, wantErr: "want NodeResourcesFitArgs"},
		{name: "a weight out of range", obj: &runtime.Unknown{Raw: []byte(`{"scoringStrategy":{"type":"LeastAllocated","resources":[{"name":"cpu","weight":101}]}}`)},
			wantErr: "weight"},
		{name: "a strategy that does not exist", obj: &runtime.Unknown{Raw: []byte(`{"scoringStrategy":{"type":"Fullest"}}`)}, wantErr: "Fullest"},
		{name: "typed args of another plugin", obj: &config.NodeResourcesBalancedAllocationArgs{}, wantErr: "want NodeResourcesFitArgs"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Args(tt.obj)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Args: error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Args (-want +got):\n%s", diff)
			}
			if _, err := New(context.Background(), tt.obj, nil); err != nil {
				t.Errorf("New with these args: %v", err)
			}
		})
	}
}

// FuzzArgs: any bytes as the plugin's args are decoded or refused with an error, never a panic,
// and what is accepted is valid NodeResourcesFit args.
func FuzzArgs(f *testing.F) {
	for _, seed := range []string{``, `{}`, `{"ignoredResources":["a"]}`, `scoringStrategy: {type: RequestedToCapacityRatio}`,
		`{"scoringStrategy":{"type":"RequestedToCapacityRatio","requestedToCapacityRatio":{"shape":[{"utilization":0,"score":0},{"utilization":100,"score":10}]}}}`,
		`{"kind":"NodeResourcesFitArgs","ignoredResourceGroups":["example.com"]}`, `[`, `null`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		args, err := Args(&runtime.Unknown{Raw: raw})
		if err != nil {
			return
		}
		if args.ScoringStrategy == nil {
			t.Fatalf("accepted args without a scoring strategy: %q", raw)
		}
	})
}

// BenchmarkFilter is one node's Filter of a GPU pod, as the scheduler runs it on hundreds of
// nodes per cycle: the in-tree plugin validates the extended resource's name every time.
func BenchmarkFilter(b *testing.B) {
	ni := node("16")
	p := pod("100m", "1")
	for _, bc := range []struct {
		name string
		pl   filterer
	}{{"in-tree NodeResourcesFit", inTree(b).(filterer)}, {Name, newFit(b)}} {
		b.Run(bc.name, func(b *testing.B) {
			state := framework.NewCycleState()
			if _, s := bc.pl.PreFilter(context.Background(), state, p, []fwk.NodeInfo{ni}); !s.IsSuccess() {
				b.Fatal(s)
			}
			b.ReportAllocs()
			for b.Loop() {
				if s := bc.pl.Filter(context.Background(), state, p, ni); !s.IsSuccess() {
					b.Fatal(s)
				}
			}
		})
	}
}

// defaultArgs are NodeResourcesFit's defaults as kube-scheduler's v1 defaulting gives them,
// written out: what Args must give without args.
func defaultArgs() *config.NodeResourcesFitArgs {
	return &config.NodeResourcesFitArgs{ScoringStrategy: &config.ScoringStrategy{
		Type:      config.LeastAllocated,
		Resources: []config.ResourceSpec{{Name: string(v1.ResourceCPU), Weight: 1}, {Name: string(v1.ResourceMemory), Weight: 1}},
	}}
}
