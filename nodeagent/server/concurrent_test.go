package server

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda/fake"
	"github.com/kybernate/kybernate/nodeagent/controller"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/inventory"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// gatedDriver holds every checkpoint call until want of them are in flight at once: if the
// agent ran independent suspends one after the other, the first would never return (and the
// test fails at its deadline). It records whether the huge page window was open during each.
type gatedDriver struct {
	*fake.Driver
	window *countingWindow
	want   int

	mu          sync.Mutex
	inFlight    int
	maxInFlight int
	windowShut  int // checkpoint calls that ran outside the window
	all         chan struct{}
}

func (d *gatedDriver) CheckpointProcessCheckpoint(pid int) error {
	d.mu.Lock()
	d.inFlight++
	d.maxInFlight = max(d.maxInFlight, d.inFlight)
	if d.window.holding() == 0 {
		d.windowShut++
	}
	if d.inFlight == d.want {
		close(d.all)
	}
	d.mu.Unlock()
	<-d.all
	err := d.Driver.CheckpointProcessCheckpoint(pid)
	d.mu.Lock()
	d.inFlight--
	d.mu.Unlock()
	return err
}

// countingWindow is an engine.HugePageWindow that counts its holders.
type countingWindow struct {
	mu      sync.Mutex
	holders int
	opens   int
}

func (w *countingWindow) Open(context.Context) (func(), error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.holders++
	w.opens++
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.holders--
	}, nil
}

func (w *countingWindow) holding() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.holders
}

type podFinder struct {
	d    *fake.Driver
	pids map[types.UID]int
}

func (f podFinder) Processes(_ context.Context, pod podmap.PodRef) ([]engine.Process, error) {
	pid, ok := f.pids[pod.UID]
	if !ok {
		return nil, nil
	}
	p, _ := f.d.Process(pid)
	return []engine.Process{{PID: pid, GPU: p.GPU, Bytes: int64(p.VRAM), State: p.State}}, nil
}

// TestConcurrentSuspends: k independent pods on one GPU, suspended by k concurrent gRPC
// calls, are checkpointed in parallel (all k driver calls in flight at once), share one huge
// page window, and resume concurrently.
func TestConcurrentSuspends(t *testing.T) {
	for _, k := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("k=%d", k), func(t *testing.T) {
			client, d, w := serveConcurrent(t, k)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // a guard, not a measurement
			defer cancel()
			errs := make([]error, k)
			var wg sync.WaitGroup
			for i := range k {
				wg.Go(func() {
					_, errs[i] = client.Suspend(ctx, &agentv1.SuspendRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: fmt.Sprintf("p%d", i)}}, grpc.WaitForReady(true))
				})
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatalf("suspends: %v", err)
			}
			if d.maxInFlight != k {
				t.Errorf("checkpoint calls in flight at once = %d, want %d", d.maxInFlight, k)
			}
			if d.windowShut != 0 || w.opens != k || w.holding() != 0 {
				t.Errorf("huge page window: %d checkpoints outside it, %d opens, %d holders left; want 0, %d, 0", d.windowShut, w.opens, w.holding(), k)
			}
			used, _ := d.UsedMem(devs[0].UUID)
			if used != 0 {
				t.Errorf("gpu memory used after %d suspends = %d, want 0", k, used)
			}
			for i := range k {
				wg.Go(func() {
					_, errs[i] = client.Resume(ctx, &agentv1.ResumeRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: fmt.Sprintf("p%d", i)}}, grpc.WaitForReady(true))
				})
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatalf("resumes: %v", err)
			}
			if used, _ := d.UsedMem(devs[0].UUID); used != uint64(int64(k)*4*gib) {
				t.Errorf("gpu memory used after the resumes = %d, want %d", used, int64(k)*4*gib)
			}
			if w.opens != k {
				t.Errorf("huge page window opened %d times, want %d (resumes do not open it)", w.opens, k)
			}
		})
	}
}

// serveConcurrent serves node-a with k pods ml/p0..p<k-1>, one process of 4 GiB each on the
// first GPU, on a gated driver that waits for k checkpoints in flight.
func serveConcurrent(t *testing.T, k int) (agentv1.NodeAgentServiceClient, *gatedDriver, *countingWindow) {
	t.Helper()
	base := fake.New(devs...)
	if err := base.Init(); err != nil {
		t.Fatal(err)
	}
	w := &countingWindow{}
	d := &gatedDriver{Driver: base, window: w, want: k, all: make(chan struct{})}
	f := podFinder{d: base, pids: map[types.UID]int{}}
	var objs []*v1.Pod
	var procs []inventory.Process
	pidPods := pids{}
	for i := range k {
		pid := 100 + i
		uid := types.UID(fmt.Sprintf("uid-%d", i))
		if err := base.AddProcess(pid, devs[0].UUID, uint64(4*gib)); err != nil {
			t.Fatal(err)
		}
		f.pids[uid] = pid
		pidPods[int32(pid)] = podmap.PodRef{Namespace: "ml", Name: fmt.Sprintf("p%d", i), UID: uid}
		procs = append(procs, inventory.Process{PID: int32(pid), UsedBytes: 4 * gib})
		objs = append(objs, &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: fmt.Sprintf("p%d", i), UID: uid,
				Annotations: map[string]string{kv1.AnnotationGPUs: devs[0].UUID.String()}},
			Spec:   v1.PodSpec{NodeName: "node-a"},
			Status: v1.PodStatus{Phase: v1.PodRunning},
		})
	}
	// A real clock: the engine's step timeouts must not fire, and nothing here waits on them.
	e := engine.New(d, f, memory(100*gib), base, base, engine.Config{LockTimeout: time.Second, StepTimeout: time.Minute, HugePages: w}, clock.RealClock{})
	kube := kubefake.NewClientset()
	for _, p := range objs {
		if _, err := kube.CoreV1().Pods(p.Namespace).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	op := controller.NewOperator(kube, controller.EngineMap{"node-a": e}, record.NewFakeRecorder(100), clock.RealClock{}, nil)
	inv := &inventory.Static{Inventory: &inventory.Inventory{DriverVersion: "580.95.05", CUDADriverVersion: 13000, GPUs: []inventory.GPU{
		{UUID: devs[0].UUID.String(), Index: 0, Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 * gib, Processes: procs},
	}}}
	nodes := NodeMap{"node-a": {Inventory: inv, Pods: pidPods, Engine: e, Suspended: e, HostMemory: memory(100 * gib)}}
	s := New(nodes, op, APIPods{Client: kube}, 8*gib, false)
	return serveOn(t, s, filepath.Join(t.TempDir(), "agent.sock"), PeerCredentials{}), d, w
}
