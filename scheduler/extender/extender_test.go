package extender

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
	st "k8s.io/kubernetes/pkg/scheduler/testing"

	"github.com/kybernate/kybernate/apis/config"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

const gi = int64(1) << 30

func gpuNode(name string, sizesGiB ...int64) *kv1.GPUNode {
	gn := &kv1.GPUNode{}
	gn.Name = name
	gn.Status.HostMemory.ParkableBytes = 1024 * gi
	slots := int32(4)
	gn.Spec.SlotsPerGPU = &slots
	for i, s := range sizesGiB {
		gn.Status.GPUs = append(gn.Status.GPUs, kv1.GPUStatus{
			UUID: gpuID(name, i), Index: int32(i), Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: s * gi,
		})
	}
	return gn
}

func gpuID(node string, i int) string { return fmt.Sprintf("GPU-%s-%d", node, i) }

func gpuPod(name string, n int, mem string) *st.PodWrapper {
	p := st.MakePod().Namespace("ns").Name(name).UID(name).
		Req(map[v1.ResourceName]string{kv1.ResourceGPU: fmt.Sprint(n)})
	if mem != "" {
		p = p.Annotation(kv1.AnnotationGPUMemory, mem)
	}
	return p
}

func on(p *st.PodWrapper, node string, gpus ...int) *v1.Pod {
	ids := make([]string, len(gpus))
	for i, g := range gpus {
		ids[i] = gpuID(node, g)
	}
	pod := p.Node(node).Annotation(kv1.AnnotationGPUs, strings.Join(ids, ",")).Obj()
	pod.Status.StartTime = &metav1.Time{Time: time.Unix(0, 0)}
	return pod
}

// fixture is an extender on a fake clientset's informers, recording what it changes.
type fixture struct {
	ext         *Extender
	srv         http.Handler
	checkpoints cache.Indexer
	mu          sync.Mutex
	bindings    []*v1.Binding
	// bindErr, when set, is what the API server's Binding call returns (after making it).
	bindErr error
	created []*kv1.GPUCheckpoint
}

func newFixture(t testing.TB, strategy config.ScoringStrategyType, gns []*kv1.GPUNode, pods ...*v1.Pod) *fixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	objs := make([]interface{}, len(pods))
	client := fake.NewClientset()
	for i, p := range pods {
		objs[i] = p
		if _, err := client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	podInformer := factory.Core().V1().Pods().Informer()
	if err := AddIndexes(podInformer); err != nil {
		t.Fatal(err)
	}
	gnIndexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, gn := range gns {
		if err := gnIndexer.Add(gn); err != nil {
			t.Fatal(err)
		}
	}
	f := &fixture{checkpoints: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})}
	api := API{
		Bind: func(_ context.Context, b *v1.Binding) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.bindings = append(f.bindings, b)
			return f.bindErr
		},
		GetPod: func(ctx context.Context, ns, name string) (*v1.Pod, error) {
			return client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		},
		CreateCheckpoint: func(_ context.Context, ck *kv1.GPUCheckpoint) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			if _, ok, _ := f.checkpoints.Get(ck); ok {
				return apierrors.NewAlreadyExists(kv1.Resource("gpucheckpoints"), ck.Name)
			}
			f.created = append(f.created, ck)
			return f.checkpoints.Add(ck)
		},
	}
	ext, err := New(Options{Strategy: strategy, DefaultMinRuntime: time.Minute}, api, podInformer,
		listers.NewGPUNodeLister(gnIndexer), f.checkpoints, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ext.now = func() time.Time { return time.Unix(3600, 0) }
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatalf("informer of %v did not sync", typ)
		}
	}
	f.ext, f.srv = ext, ext.Handler()
	return f
}

// post sends a verb's request and decodes a 200 answer into out; it returns the status code
// and body.
func (f *fixture) post(t testing.TB, path string, in any, out any) (int, string) {
	t.Helper()
	body, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	return f.postRaw(t, path, body, out)
}

func (f *fixture) postRaw(t testing.TB, path string, body []byte, out any) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	f.srv.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
	if rec.Code == http.StatusOK && out != nil {
		if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
			t.Fatalf("decoding %s answer %q: %v", path, rec.Body.String(), err)
		}
	}
	return rec.Code, rec.Body.String()
}

func (f *fixture) filter(t *testing.T, pod *v1.Pod, nodes ...string) *extenderv1.ExtenderFilterResult {
	t.Helper()
	var res extenderv1.ExtenderFilterResult
	if code, body := f.post(t, PathFilter, extenderv1.ExtenderArgs{Pod: pod, NodeNames: &nodes}, &res); code != http.StatusOK {
		t.Fatalf("filter: HTTP %d: %s", code, body)
	}
	return &res
}

func (f *fixture) bind(t *testing.T, pod *v1.Pod, node string) extenderv1.ExtenderBindingResult {
	t.Helper()
	var res extenderv1.ExtenderBindingResult
	args := extenderv1.ExtenderBindingArgs{PodName: pod.Name, PodNamespace: pod.Namespace, PodUID: pod.UID, Node: node}
	if code, body := f.post(t, PathBind, args, &res); code != http.StatusOK {
		t.Fatalf("bind: HTTP %d: %s", code, body)
	}
	return res
}

func TestFilterAndPrioritize(t *testing.T) {
	gns := []*kv1.GPUNode{gpuNode("a", 80), gpuNode("b", 80), gpuNode("small", 20)}
	used := on(gpuPod("used", 1, "40Gi"), "a", 0)
	pod := gpuPod("p", 1, "30Gi").Obj()
	for _, tc := range []struct {
		strategy config.ScoringStrategyType
		best     string
	}{{config.MostAllocated, "a"}, {config.LeastAllocated, "b"}} {
		t.Run(string(tc.strategy), func(t *testing.T) {
			f := newFixture(t, tc.strategy, gns, used, pod)
			res := f.filter(t, pod, "a", "b", "small", "nogpunode")
			if got := strings.Join(*res.NodeNames, ","); got != "a,b" {
				t.Errorf("passing nodes = %q, want a,b (failed %v, unresolvable %v)", got, res.FailedNodes, res.FailedAndUnresolvableNodes)
			}
			if _, ok := res.FailedAndUnresolvableNodes["small"]; !ok {
				t.Errorf("a node whose GPUs are too small is not unresolvable: %v", res.FailedAndUnresolvableNodes)
			}
			if msg := res.FailedAndUnresolvableNodes["nogpunode"]; !strings.Contains(msg, "no GPUNode") {
				t.Errorf("node without GPUNode: %q", msg)
			}
			var scores extenderv1.HostPriorityList
			nodes := []string{"a", "b"}
			if code, body := f.post(t, PathPrioritize, extenderv1.ExtenderArgs{Pod: pod, NodeNames: &nodes}, &scores); code != http.StatusOK {
				t.Fatalf("prioritize: HTTP %d: %s", code, body)
			}
			best := scores[0]
			for _, s := range scores {
				if s.Score < 0 || s.Score > extenderv1.MaxExtenderPriority {
					t.Errorf("score %v out of range", s)
				}
				if s.Score > best.Score {
					best = s
				}
			}
			if best.Host != tc.best {
				t.Errorf("best node = %s, want %s (%v)", best.Host, tc.best, scores)
			}
		})
	}
}

func TestFilterPassesPodsWithoutGPUsAndRejectsBadAnnotations(t *testing.T) {
	plain := st.MakePod().Namespace("ns").Name("plain").UID("plain").Obj()
	badMem := gpuPod("bad", 1, "").Annotation(kv1.AnnotationGPUMemory, "lots").Obj()
	f := newFixture(t, config.MostAllocated, []*kv1.GPUNode{gpuNode("a", 80)}, plain, badMem)
	if res := f.filter(t, plain, "a", "x"); len(*res.NodeNames) != 2 {
		t.Errorf("pod without GPUs: passing %v", *res.NodeNames)
	}
	res := f.filter(t, badMem, "a")
	if msg := res.FailedAndUnresolvableNodes["a"]; !strings.Contains(msg, kv1.AnnotationGPUMemory) {
		t.Errorf("bad annotation: %q, want it named", msg)
	}
}

func TestBindWritesGPUsAndNeverOvercommits(t *testing.T) {
	p1, p2, p3 := gpuPod("p1", 1, "50Gi").Obj(), gpuPod("p2", 1, "50Gi").Obj(), gpuPod("p3", 1, "50Gi").Obj()
	f := newFixture(t, config.MostAllocated, []*kv1.GPUNode{gpuNode("a", 80, 80)}, p1, p2, p3)
	// The fake clientset never binds, so the informer never shows the pods on the node: only
	// the extender's own record of its binds keeps them apart.
	for _, p := range []*v1.Pod{p1, p2} {
		if res := f.bind(t, p, "a"); res.Error != "" {
			t.Fatalf("bind %s: %s", p.Name, res.Error)
		}
	}
	res := f.bind(t, p3, "a")
	if !strings.Contains(res.Error, "too few free GPUs") {
		t.Errorf("third 50Gi pod on two 80Gi GPUs: error %q, want too few free GPUs", res.Error)
	}
	if len(f.bindings) != 2 {
		t.Fatalf("bindings = %d, want 2", len(f.bindings))
	}
	seen := map[string]bool{}
	for _, b := range f.bindings {
		gpus := b.Annotations[kv1.AnnotationGPUs]
		if b.Target.Name != "a" || gpus == "" || seen[gpus] {
			t.Errorf("binding %s: node %s, GPUs %q (seen before: %v)", b.Name, b.Target.Name, gpus, seen[gpus])
		}
		seen[gpus] = true
	}
	if filtered := f.filter(t, p3, "a"); len(*filtered.NodeNames) != 0 {
		t.Errorf("filter passes a node whose GPUs the extender bound: %v", *filtered.NodeNames)
	}
}

func TestPreemptionBySuspension(t *testing.T) {
	victim := on(gpuPod("victim", 1, "60Gi").Priority(1), "a", 0)
	young := on(gpuPod("young", 1, "60Gi").Priority(1), "b", 0)
	young.Status.StartTime = &metav1.Time{Time: time.Unix(3590, 0)} // within min-runtime
	preemptor := gpuPod("preemptor", 1, "60Gi").Priority(100).Obj()
	low := gpuPod("low", 1, "30Gi").Priority(1).Obj()
	f := newFixture(t, config.MostAllocated, []*kv1.GPUNode{gpuNode("a", 80), gpuNode("b", 80)}, victim, young, preemptor, low)

	res := f.filter(t, preemptor, "a", "b")
	if len(*res.NodeNames) != 0 || !strings.Contains(res.FailedNodes["a"], "suspending 1 pod(s) on node a") {
		t.Fatalf("filter with full nodes: passing %v, failed %v", *res.NodeNames, res.FailedNodes)
	}
	if len(f.created) != 1 {
		t.Fatalf("created %d GPUCheckpoints, want 1", len(f.created))
	}
	ck := f.created[0]
	if ck.Spec.PodUID != "victim" || ck.Spec.Action != kv1.ActionSuspend || ck.Spec.Reason != kv1.ReasonPreemption || ck.Labels[kv1.LabelPreemptor] != "preemptor" {
		t.Errorf("GPUCheckpoint = %+v", ck)
	}
	// While the suspension runs the preemptor waits and asks for nothing more.
	res = f.filter(t, preemptor, "a", "b")
	if !strings.Contains(res.FailedNodes["a"], "waiting for 1 suspension") || len(f.created) != 1 {
		t.Errorf("second filter: %v, %d GPUCheckpoints", res.FailedNodes, len(f.created))
	}

	// The agent suspends the victim.
	suspended := gpupod.AsSuspended(victim)
	if err := f.ext.pods.Update(suspended); err != nil {
		t.Fatal(err)
	}
	done := ck.DeepCopy()
	done.Status.Phase = kv1.PhaseSucceeded
	if err := f.checkpoints.Update(done); err != nil {
		t.Fatal(err)
	}
	// A lower-priority pod does not take the room made for the preemptor.
	if res := f.filter(t, low, "a"); len(*res.NodeNames) != 0 {
		t.Errorf("a lower-priority pod fits where a preemptor waits: %v", *res.NodeNames)
	}
	res = f.filter(t, preemptor, "a", "b")
	if got := strings.Join(*res.NodeNames, ","); got != "a" {
		t.Errorf("preemptor after the suspension: passing %q, want a (failed %v)", got, res.FailedNodes)
	}
	if r := f.bind(t, preemptor, "a"); r.Error != "" {
		t.Errorf("bind preemptor: %s", r.Error)
	}
}

func TestPreemptVerbNeverHandsOverGPUPods(t *testing.T) {
	gpuVictim := on(gpuPod("gpu", 1, "60Gi").Priority(1), "a", 0)
	cpuVictim := st.MakePod().Namespace("ns").Name("cpu").UID("cpu").Node("b").Priority(1).Obj()
	preemptor := gpuPod("preemptor", 1, "60Gi").Priority(100).Obj()
	f := newFixture(t, config.MostAllocated, []*kv1.GPUNode{gpuNode("a", 80), gpuNode("b", 80)}, gpuVictim, cpuVictim, preemptor)
	args := extenderv1.ExtenderPreemptionArgs{Pod: preemptor, NodeNameToMetaVictims: map[string]*extenderv1.MetaVictims{
		"a": {Pods: []*extenderv1.MetaPod{{UID: "gpu"}}},
		"b": {Pods: []*extenderv1.MetaPod{{UID: "cpu"}}},
		"c": {Pods: []*extenderv1.MetaPod{{UID: "unknown"}}},
	}}
	var res extenderv1.ExtenderPreemptionResult
	if code, body := f.post(t, PathPreempt, args, &res); code != http.StatusOK {
		t.Fatalf("preempt: HTTP %d: %s", code, body)
	}
	if len(res.NodeNameToMetaVictims) != 1 || res.NodeNameToMetaVictims["b"] == nil || res.NodeNameToMetaVictims["b"].Pods[0].UID != "cpu" {
		t.Errorf("preempt answer = %v, want only node b with the pod without GPUs", res.NodeNameToMetaVictims)
	}
}

func TestMalformedRequests(t *testing.T) {
	pod := gpuPod("p", 1, "").Obj()
	f := newFixture(t, config.MostAllocated, []*kv1.GPUNode{gpuNode("a", 80)}, pod)
	for _, tc := range []struct {
		path, body, want string
	}{
		{PathFilter, ``, "empty body"},
		{PathFilter, `{`, "not a JSON"},
		{PathFilter, `[]`, "not a JSON"},
		{PathFilter, `{"nodenames":["a"]}`, "pod is missing"},
		{PathFilter, `{"pod":{"metadata":{"name":"p","namespace":"ns"}},"nodenames":["a"]}`, "has no uid"},
		{PathFilter, `{"pod":{"metadata":{"name":"p","namespace":"ns","uid":"p"}}}`, "neither nodenames nor nodes"},
		{PathPrioritize, `{"pod":{"metadata":{"name":"p","namespace":"ns","uid":"p"}},"nodenames":[""]}`, "nodenames[0] is empty"},
		{PathPreempt, `{"pod":{"metadata":{"name":"p","namespace":"ns","uid":"p"}},"nodeNameToMetaVictims":{"a":{"pods":[{}]}}}`, "has no uid"},
		{PathBind, `{"podName":"p","podNamespace":"ns","node":"a"}`, "podUID is empty"},
		{PathBind, `{"podName":"p","podNamespace":"ns","podUID":"p","node":""}`, "node is empty"},
		{PathBind, `{"podName":5}`, "not a JSON"},
	} {
		code, body := f.postRaw(t, tc.path, []byte(tc.body), nil)
		if code != http.StatusBadRequest || !strings.Contains(body, tc.want) {
			t.Errorf("%s %s: HTTP %d %q, want 400 with %q", tc.path, tc.body, code, body, tc.want)
		}
	}
	rec := httptest.NewRecorder()
	f.srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, PathFilter, nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET filter: HTTP %d", rec.Code)
	}
	if len(f.bindings) != 0 || len(f.created) != 0 || f.ext.ledger.Len() != 0 {
		t.Errorf("malformed requests changed something: %d bindings, %d GPUCheckpoints, %d reservations", len(f.bindings), len(f.created), f.ext.ledger.Len())
	}
}

// A bind whose API call times out may have bound the pod: its GPUs stay reserved, so the next
// pod gets others. A refusal by the API server releases them.
func TestUnclearBindKeepsTheReservation(t *testing.T) {
	p1, p2, p3 := gpuPod("p1", 1, "50Gi").Obj(), gpuPod("p2", 1, "50Gi").Obj(), gpuPod("p3", 1, "50Gi").Obj()
	f := newFixture(t, config.MostAllocated, []*kv1.GPUNode{gpuNode("a", 80, 80)}, p1, p2, p3)
	f.bindErr = context.DeadlineExceeded
	if res := f.bind(t, p1, "a"); res.Error == "" {
		t.Fatal("bind with a timed-out API call reported no error")
	}
	f.bindErr = apierrors.NewConflict(v1.Resource("pods/binding"), "p2", fmt.Errorf("already assigned"))
	if res := f.bind(t, p2, "a"); res.Error == "" {
		t.Fatal("bind refused by the API server reported no error")
	}
	f.bindErr = nil
	if res := f.bind(t, p3, "a"); res.Error != "" {
		t.Fatalf("bind p3: %s", res.Error)
	}
	g1, g3 := f.bindings[0].Annotations[kv1.AnnotationGPUs], f.bindings[2].Annotations[kv1.AnnotationGPUs]
	if g1 == g3 {
		t.Errorf("p3 got %s, the GPU of the unclear bind of p1", g3)
	}
	if _, _, ok := f.ext.ledger.Placed("p2"); ok {
		t.Errorf("a refused bind kept its reservation")
	}
}
