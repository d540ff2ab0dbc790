package engine

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/types"
	compmetrics "k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/testutil"
	testingclock "k8s.io/utils/clock/testing"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/cuda/fake"
	"github.com/kybernate/kybernate/nodeagent/metrics"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

const gib = int64(1) << 30

var (
	devs    = fake.Devices(3, "NVIDIA H100 80GB HBM3", 80<<30)
	gpu0    = devs[0].UUID
	gpu1    = devs[1].UUID
	gpu2    = devs[2].UUID
	train   = podmap.PodRef{Namespace: "ml", Name: "train", UID: "uid-train"}
	trainPs = []int{100, 101} // on gpu0 and gpu1
)

// driverFinder finds a pod's processes in the fake driver, as the simulation does.
type driverFinder struct {
	d    *fake.Driver
	pids map[types.UID][]int
}

func (f *driverFinder) Processes(_ context.Context, pod podmap.PodRef) ([]Process, error) {
	var out []Process
	for _, pid := range f.pids[pod.UID] {
		p, ok := f.d.Process(pid)
		if !ok {
			continue
		}
		out = append(out, Process{PID: pid, GPU: p.GPU, Bytes: int64(p.VRAM), State: p.State})
	}
	return out, nil
}

type fixedMemory int64

func (m fixedMemory) MemAvailable() (int64, error) { return int64(m), nil }

type harness struct {
	e      *Engine
	d      *fake.Driver
	finder *driverFinder
	clock  *testingclock.FakeClock
}

// newHarness is a node with three GPUs and the pod train with 30 GiB on gpu0 and 20 GiB on gpu1.
func newHarness(t *testing.T, hostMemory int64, cfg Config) *harness {
	t.Helper()
	d := fake.New(devs...)
	if err := d.Init(); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(d.AddProcess(100, gpu0, uint64(30*gib)), d.AddProcess(101, gpu1, uint64(20*gib))); err != nil {
		t.Fatal(err)
	}
	f := &driverFinder{d: d, pids: map[types.UID][]int{train.UID: trainPs}}
	if cfg.LockTimeout == 0 {
		cfg.LockTimeout = 10 * time.Second
	}
	if cfg.StepTimeout == 0 {
		cfg.StepTimeout = time.Minute
	}
	clk := testingclock.NewFakeClock(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC))
	return &harness{e: New(d, f, fixedMemory(hostMemory), d, d, cfg, clk), d: d, finder: f, clock: clk}
}

// states returns the pod's processes' states and GPUs, and the memory used per GPU.
func (h *harness) snapshot() (map[int]string, [3]int64) {
	states := map[int]string{}
	for _, pid := range trainPs {
		p, _ := h.d.Process(pid)
		states[pid] = p.State.String() + "@" + p.GPU.String()[len(p.GPU.String())-1:]
	}
	var used [3]int64
	for i, g := range []cuda.UUID{gpu0, gpu1, gpu2} {
		u, _ := h.d.UsedMem(g)
		used[i] = int64(u)
	}
	return states, used
}

func running(g0, g1 string) map[int]string {
	return map[int]string{100: "RUNNING@" + g0, 101: "RUNNING@" + g1}
}

func checkpointed() map[int]string {
	return map[int]string{100: "CHECKPOINTED@1", 101: "CHECKPOINTED@2"}
}

func failOn(call string, pid int, err error, times int) fake.Hook {
	var mu sync.Mutex
	n := 0
	return func(c string, p int) error {
		mu.Lock()
		defer mu.Unlock()
		if c == call && p == pid && n < times {
			n++
			return err
		}
		return nil
	}
}

func TestSuspendResume(t *testing.T) {
	h := newHarness(t, 100*gib, Config{HostMemoryReserve: 8 * gib})
	res, err := h.e.Suspend(t.Context(), train, 0)
	if err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	want := Result{Bytes: 50 * gib, Steps: []Step{{Name: StepLock}, {Name: StepCheckpoint, Bytes: 50 * gib}},
		Parked: []Process{{PID: 100, GPU: gpu0, Bytes: 30 * gib}, {PID: 101, GPU: gpu1, Bytes: 20 * gib}}}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Errorf("suspend result (-want +got):\n%s", diff)
	}
	states, used := h.snapshot()
	if diff := cmp.Diff(checkpointed(), states); diff != "" || used != [3]int64{} {
		t.Errorf("after suspend: states (-want +got):\n%s used %v", diff, used)
	}
	wantParked := []kv1.PodGPUUsage{{Namespace: "ml", Name: "train", UID: "uid-train", Residency: kv1.Suspended, Bytes: 50 * gib, GPUs: []string{gpu0.String(), gpu1.String()}}}
	if diff := cmp.Diff(wantParked, h.e.SuspendedPods()); diff != "" {
		t.Errorf("suspended pods (-want +got):\n%s", diff)
	}
	for _, c := range h.d.Calls() {
		if c.Name == fake.CallLock && c.Timeout != 10*time.Second {
			t.Errorf("lock with timeout %v, want the configured 10s", c.Timeout)
		}
	}

	res, err = h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, nil)
	if err != nil {
		t.Fatalf("Resume: %v", err)
	}
	want = Result{Bytes: 50 * gib, Steps: []Step{{Name: StepRestore, Bytes: 50 * gib}, {Name: StepUnlock}}, GPUs: []cuda.UUID{gpu0, gpu1}}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Errorf("resume result (-want +got):\n%s", diff)
	}
	states, used = h.snapshot()
	if diff := cmp.Diff(running("1", "2"), states); diff != "" || used != [3]int64{30 * gib, 20 * gib, 0} {
		t.Errorf("after resume: states (-want +got):\n%s used %v", diff, used)
	}
	if len(h.e.SuspendedPods()) != 0 {
		t.Errorf("suspended pods after resume: %v", h.e.SuspendedPods())
	}
	for _, c := range h.d.Calls() {
		if c.Name == fake.CallRestore && c.Pairs != nil {
			t.Errorf("in-place restore with pairs %v, want none", c.Pairs)
		}
	}
}

func TestResumeOntoOtherGPU(t *testing.T) {
	h := newHarness(t, 100*gib, Config{})
	if _, err := h.e.Suspend(t.Context(), train, time.Second); err != nil {
		t.Fatal(err)
	}
	// gpu1's memory goes to gpu2; gpu0's stays.
	res, err := h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, []cuda.UUID{gpu0, gpu2})
	if err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if diff := cmp.Diff([]cuda.UUID{gpu0, gpu2}, res.GPUs); diff != "" {
		t.Errorf("gpus (-want +got):\n%s", diff)
	}
	states, used := h.snapshot()
	if diff := cmp.Diff(running("1", "3"), states); diff != "" || used != [3]int64{30 * gib, 0, 20 * gib} {
		t.Errorf("after resume: states (-want +got):\n%s used %v", diff, used)
	}
	wantPairs, _ := cuda.RemapPairs([]cuda.UUID{gpu0, gpu1, gpu2}, map[cuda.UUID]cuda.UUID{gpu0: gpu0, gpu1: gpu2})
	for _, c := range h.d.Calls() {
		if c.Name == fake.CallRestore {
			if diff := cmp.Diff(wantPairs, c.Pairs); diff != "" {
				t.Errorf("restore pairs (-want +got):\n%s", diff)
			}
		}
	}
}

// The scheduler's resume controller writes the target GPUs into kybernate.io/gpus before it
// asks: the memory still comes from where it was parked.
func TestResumeOntoGPUsTheAnnotationAlreadyNames(t *testing.T) {
	h := newHarness(t, 100*gib, Config{})
	if _, err := h.e.Suspend(t.Context(), train, time.Second); err != nil {
		t.Fatal(err)
	}
	// The annotation names the targets already; the GPUCheckpoint may name them again.
	res, err := h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu2}, []cuda.UUID{gpu0, gpu2})
	if err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if diff := cmp.Diff([]cuda.UUID{gpu0, gpu2}, res.GPUs); diff != "" {
		t.Errorf("gpus (-want +got):\n%s", diff)
	}
	states, used := h.snapshot()
	if diff := cmp.Diff(running("1", "3"), states); diff != "" || used != [3]int64{30 * gib, 0, 20 * gib} {
		t.Errorf("after resume: states (-want +got):\n%s used %v", diff, used)
	}
}

func TestSuspendFailuresRollBack(t *testing.T) {
	tests := []struct {
		name         string
		hostMemory   int64
		setup        func(h *harness)
		wantCause    Cause
		wantMsg      string
		wantRolled   bool
		wantNoLocks  bool
		wantRunning  bool
		lockTimeout  time.Duration
		wantLockWait time.Duration
	}{
		{
			name:        "lock timeout on the second process",
			hostMemory:  100 * gib,
			setup:       func(h *harness) { _ = h.d.SetBusy(101, true) },
			lockTimeout: 2 * time.Second,
			wantCause:   CauseLockTimeout, wantRolled: true, wantRunning: true,
			wantMsg: "pid 101 did not finish its gpu work within 2s",
		},
		{
			name:       "lock fails",
			hostMemory: 100 * gib,
			setup: func(h *harness) {
				h.d.SetHook(failOn(fake.CallLock, 101, cuda.NewError("cuCheckpointProcessLock", cuda.ErrorNotPermitted), 1))
			},
			wantCause: CauseLockFailed, wantRolled: true, wantRunning: true,
			wantMsg: "CUDA_ERROR_NOT_PERMITTED",
		},
		{
			name:       "checkpoint fails on the second process",
			hostMemory: 100 * gib,
			setup: func(h *harness) {
				h.d.SetHook(failOn(fake.CallCheckpoint, 101, cuda.NewError("cuCheckpointProcessCheckpoint", cuda.ErrorUnknown), 1))
			},
			wantCause: CauseCheckpointFailed, wantRolled: true, wantRunning: true,
			wantMsg: "CUDA_ERROR_UNKNOWN",
		},
		{
			name:       "checkpoint fails and so does the rollback",
			hostMemory: 100 * gib,
			setup: func(h *harness) {
				h.d.SetFault(fake.CallCheckpoint, cuda.NewError("cuCheckpointProcessCheckpoint", cuda.ErrorUnknown))
				h.d.SetHook(failOn(fake.CallUnlock, 100, cuda.NewError("cuCheckpointProcessUnlock", cuda.ErrorIllegalState), 1))
			},
			wantCause: CauseCheckpointFailed, wantRolled: false,
			wantMsg: "rolling back failed too",
		},
		{
			name:       "host memory exhausted",
			hostMemory: 50 * gib, // 50 - 8 reserve < 50 needed
			wantCause:  CauseHostMemoryExhausted, wantNoLocks: true, wantRunning: true,
			wantMsg: "parking the pod's 50Gi of gpu memory needs as much host memory, but only 42Gi is parkable (50Gi available minus a reserve of 8Gi)",
		},
		{
			name:       "driver without checkpoint api",
			hostMemory: 100 * gib,
			setup:      func(h *harness) { h.d.SetDriverVersion(12040) },
			wantCause:  CauseUnsupported, wantNoLocks: true, wantRunning: true,
			wantMsg: "checkpoint api not supported by driver",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.hostMemory, Config{HostMemoryReserve: 8 * gib})
			if tt.setup != nil {
				tt.setup(h)
			}
			_, err := h.e.Suspend(t.Context(), train, tt.lockTimeout)
			if err == nil {
				t.Fatal("Suspend succeeded, want an error")
			}
			if got := CauseOf(err); got != tt.wantCause {
				t.Errorf("cause %s, want %s (%v)", got, tt.wantCause, err)
			}
			if got := RolledBack(err); got != tt.wantRolled {
				t.Errorf("rolled back %v, want %v (%v)", got, tt.wantRolled, err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q, want it to contain %q", err, tt.wantMsg)
			}
			h.d.SetHook(nil)
			if tt.wantRunning {
				states, used := h.snapshot()
				if diff := cmp.Diff(running("1", "2"), states); diff != "" || used != [3]int64{30 * gib, 20 * gib, 0} {
					t.Errorf("pod not back to running: states (-want +got):\n%s used %v", diff, used)
				}
			}
			if tt.wantNoLocks {
				for _, c := range h.d.Calls() {
					if c.Name == fake.CallLock {
						t.Errorf("lock called: %+v", c)
					}
				}
			}
			if len(h.e.SuspendedPods()) != 0 {
				t.Errorf("pod recorded as suspended after a failed suspend")
			}
		})
	}
}

func TestFailureMetrics(t *testing.T) {
	metrics.Register()
	failures := metrics.Failures.WithLabelValues(metrics.OperationSuspend, string(CauseLockTimeout))
	before, err := testutil.GetCounterMetricValue(failures)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, 100*gib, Config{})
	_ = h.d.SetBusy(100, true)
	if _, err := h.e.Suspend(t.Context(), train, time.Second); CauseOf(err) != CauseLockTimeout {
		t.Fatalf("Suspend error %v, want LockTimeout", err)
	}
	after, err := testutil.GetCounterMetricValue(failures)
	if err != nil {
		t.Fatal(err)
	}
	if after-before != 1 {
		t.Errorf("lock timeout failures went from %v to %v, want one more", before, after)
	}
}

func TestResumeRetriesRefusedRestore(t *testing.T) {
	h := newHarness(t, 100*gib, Config{RestoreRetries: 3})
	if _, err := h.e.Suspend(t.Context(), train, 0); err != nil {
		t.Fatal(err)
	}
	h.d.SetHook(failOn(fake.CallRestore, 101, cuda.NewError("cuCheckpointProcessRestore", cuda.ErrorInvalidValue), 2))
	if _, err := h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, nil); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	restores := 0
	for _, c := range h.d.Calls() {
		if c.Name == fake.CallRestore && c.PID == 101 {
			restores++
		}
	}
	if restores != 3 {
		t.Errorf("%d restores of pid 101, want 3 (two refused)", restores)
	}
	if states, _ := h.snapshot(); !cmp.Equal(running("1", "2"), states) {
		t.Errorf("states %v, want running", states)
	}
}

func TestResumeFailureRollsBackToSuspended(t *testing.T) {
	h := newHarness(t, 100*gib, Config{RestoreRetries: 2})
	if _, err := h.e.Suspend(t.Context(), train, 0); err != nil {
		t.Fatal(err)
	}
	h.d.SetHook(failOn(fake.CallRestore, 101, cuda.NewError("cuCheckpointProcessRestore", cuda.ErrorInvalidValue), 100))
	_, err := h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, nil)
	if CauseOf(err) != CauseRestoreFailed || !RolledBack(err) || !strings.Contains(err.Error(), "refused 2 times") {
		t.Fatalf("Resume error %v, want RestoreFailed, rolled back, refused 2 times", err)
	}
	h.d.SetHook(nil)
	states, used := h.snapshot()
	if diff := cmp.Diff(checkpointed(), states); diff != "" || used != [3]int64{} {
		t.Errorf("pod not back to suspended: states (-want +got):\n%s used %v", diff, used)
	}
	if len(h.e.SuspendedPods()) != 1 {
		t.Errorf("pod not recorded as suspended")
	}
	// A later resume works.
	if _, err := h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, nil); err != nil {
		t.Errorf("second Resume: %v", err)
	}
}

func TestRefusals(t *testing.T) {
	tests := []struct {
		name      string
		run       func(t *testing.T, h *harness) error
		wantCause Cause
		wantMsg   string
	}{
		{
			name: "suspend twice",
			run: func(t *testing.T, h *harness) error {
				if _, err := h.e.Suspend(t.Context(), train, 0); err != nil {
					t.Fatal(err)
				}
				_, err := h.e.Suspend(t.Context(), train, 0)
				return err
			},
			wantCause: CauseWrongState, wantMsg: "pod is suspended already",
		},
		{
			name: "resume a running pod",
			run: func(t *testing.T, h *harness) error {
				_, err := h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, nil)
				return err
			},
			wantCause: CauseWrongState, wantMsg: "pod is not suspended",
		},
		{
			name: "pod without processes",
			run: func(t *testing.T, h *harness) error {
				_, err := h.e.Suspend(t.Context(), podmap.PodRef{Namespace: "ml", Name: "cpu", UID: "uid-cpu"}, 0)
				return err
			},
			wantCause: CauseNoProcesses, wantMsg: "pod has no gpu processes on the node",
		},
		{
			name: "target not on the node",
			run: func(t *testing.T, h *harness) error {
				if _, err := h.e.Suspend(t.Context(), train, 0); err != nil {
					t.Fatal(err)
				}
				other := cuda.MustParseUUID("GPU-ffffffff-0000-0000-0000-000000000000")
				_, err := h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, []cuda.UUID{gpu0, other})
				return err
			},
			wantCause: CauseInvalidTarget, wantMsg: "target gpu GPU-ffffffff-0000-0000-0000-000000000000 is not a gpu of the node",
		},
		{
			name: "wrong number of targets",
			run: func(t *testing.T, h *harness) error {
				if _, err := h.e.Suspend(t.Context(), train, 0); err != nil {
					t.Fatal(err)
				}
				_, err := h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, []cuda.UUID{gpu2})
				return err
			},
			wantCause: CauseInvalidTarget, wantMsg: "1 target gpus for a pod on 2 gpus",
		},
		{
			name: "remap on a driver without it",
			run: func(t *testing.T, h *harness) error {
				if _, err := h.e.Suspend(t.Context(), train, 0); err != nil {
					t.Fatal(err)
				}
				h.d.SetDriverVersion(12080)
				_, err := h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, []cuda.UUID{gpu2, gpu1})
				return err
			},
			wantCause: CauseUnsupported, wantMsg: "restoring onto other gpus not supported by driver",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, 100*gib, Config{})
			err := tt.run(t, h)
			if CauseOf(err) != tt.wantCause || err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %v, want cause %s containing %q", err, tt.wantCause, tt.wantMsg)
			}
		})
	}
}

func TestOneOperationPerPod(t *testing.T) {
	h := newHarness(t, 100*gib, Config{})
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h.d.SetHook(func(call string, pid int) error {
		if call == fake.CallCheckpoint {
			once.Do(func() { close(entered); <-release })
		}
		return nil
	})
	done := make(chan error)
	go func() {
		_, err := h.e.Suspend(context.Background(), train, 0)
		done <- err
	}()
	<-entered
	if !h.e.Busy() {
		t.Error("Busy() = false while a suspend moves memory")
	}
	_, err := h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, nil)
	if CauseOf(err) != CauseBusy {
		t.Errorf("concurrent Resume error %v, want Busy", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Errorf("Suspend: %v", err)
	}
	if h.e.Busy() {
		t.Error("Busy() = true after the suspend ended")
	}
}

func TestStepTimeoutLeavesPodAlone(t *testing.T) {
	h := newHarness(t, 100*gib, Config{StepTimeout: time.Minute})
	release, stuck := make(chan struct{}), make(chan struct{})
	defer close(release)
	h.d.SetHook(func(call string, pid int) error {
		if call == fake.CallCheckpoint {
			close(stuck)
			<-release // a driver call that does not return
		}
		return nil
	})
	done := make(chan error)
	go func() {
		_, err := h.e.Suspend(context.Background(), train, 0)
		done <- err
	}()
	// A hang of the engine is a failure of this test, not a hang of the test binary: every
	// wait below ends at this (real-time) guard.
	guard := time.After(time.Minute)
	select {
	case <-stuck:
	case <-guard:
		t.Fatal("the checkpoint call was never made")
	}
	// Move the clock past the step timeout until the timer, armed around the call, fires
	// (earlier steps' timers are stopped by then).
	var err error
	for waiting := true; waiting; {
		if h.clock.HasWaiters() {
			h.clock.Step(2 * time.Hour)
		}
		select {
		case err = <-done:
			waiting = false
		case <-guard:
			t.Fatal("Suspend did not return after its step timeout")
		case <-time.After(5 * time.Millisecond):
		}
	}
	if CauseOf(err) != CauseStepTimeout {
		t.Fatalf("Suspend error %v, want StepTimeout", err)
	}
	_, err = h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, nil)
	if CauseOf(err) != CauseStepTimeout || !strings.Contains(err.Error(), "unknown state") {
		t.Errorf("next operation error %v, want a refusal", err)
	}
	// The hung call holds the fake driver until release: a rollback or unlock of the process
	// in its unknown state would have hung Suspend (the guard) or failed the refusal above.
}

// Parked tells a checkpoint whether a pod's memory is in host memory already, and how much.
func TestParked(t *testing.T) {
	h := newHarness(t, 100*gib, Config{})
	if _, ok := h.e.Parked(train.UID); ok {
		t.Fatal("a running pod reported parked")
	}
	res, err := h.e.Suspend(t.Context(), train, 0)
	if err != nil {
		t.Fatal(err)
	}
	if bytes, ok := h.e.Parked(train.UID); !ok || bytes != res.Bytes || bytes == 0 {
		t.Errorf("Parked = %d, %v; want %d, true", bytes, ok, res.Bytes)
	}
	if _, err := h.e.Resume(t.Context(), train, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.e.Parked(train.UID); ok {
		t.Error("a resumed pod reported parked")
	}
}

func TestResumeAfterRestart(t *testing.T) {
	h := newHarness(t, 100*gib, Config{})
	if _, err := h.e.Suspend(t.Context(), train, 0); err != nil {
		t.Fatal(err)
	}
	// A new engine on the same driver: the agent restarted.
	e := New(h.d, h.finder, fixedMemory(100*gib), h.d, h.d, Config{StepTimeout: time.Minute}, h.clock)
	if _, err := e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, nil); err != nil {
		t.Fatalf("Resume after restart: %v", err)
	}
	if states, _ := h.snapshot(); !cmp.Equal(running("1", "2"), states) {
		t.Errorf("states %v, want running", states)
	}
}

// A successful operation records its bytes and its rate; a failed one neither.
func TestSuccessMetrics(t *testing.T) {
	metrics.Register()
	start := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	hist := func(h interface {
		WithLabelValues(...string) compmetrics.ObserverMetric
	}) (count uint64, sum float64) {
		t.Helper()
		o := h.WithLabelValues(metrics.OperationResume)
		count, err := testutil.GetHistogramMetricCount(o)
		if err != nil {
			t.Fatal(err)
		}
		sum, err = testutil.GetHistogramMetricValue(o)
		if err != nil {
			t.Fatal(err)
		}
		return count, sum
	}
	bytesCount, bytesSum := hist(metrics.OperationBytes)
	rateCount, rateSum := hist(metrics.OperationThroughput)

	observe(metrics.OperationResume, start, start.Add(2*time.Second), Result{Bytes: 8 * gib}, nil)
	observe(metrics.OperationResume, start, start.Add(time.Second), Result{Bytes: 8 * gib}, errors.New("refused"))

	c, s := hist(metrics.OperationBytes)
	if c-bytesCount != 1 || s-bytesSum != float64(8*gib) {
		t.Errorf("operation_bytes: %d samples summing %v more, want 1 of %d", c-bytesCount, s-bytesSum, 8*gib)
	}
	c, s = hist(metrics.OperationThroughput)
	if c-rateCount != 1 || s-rateSum != float64(4*gib) {
		t.Errorf("operation_throughput: %d samples summing %v more, want 1 of %d bytes/s", c-rateCount, s-rateSum, 4*gib)
	}
}
