package checkpoint

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/types"
	testingclock "k8s.io/utils/clock/testing"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

const gpu = "GPU-aaaaaaaa-0000-0000-0000-000000000001"

// fakeRuntime records calls; failing names the call that fails.
type fakeRuntime struct {
	ctr     Container
	calls   []string
	failing string
}

func (f *fakeRuntime) call(name string) error {
	f.calls = append(f.calls, name)
	if f.failing == name {
		return errors.New(name + " exploded")
	}
	return nil
}

func (f *fakeRuntime) FindContainer(_ context.Context, pod image.Pod, name string) (Container, error) {
	if pod.Name != f.ctr.Pod.Name {
		return Container{}, errors.New("no such pod")
	}
	return f.ctr, nil
}
func (f *fakeRuntime) Pause(context.Context, string) error  { return f.call("Pause") }
func (f *fakeRuntime) Resume(context.Context, string) error { return f.call("Resume") }
func (f *fakeRuntime) Stop(context.Context, string) error   { return f.call("Stop") }
func (f *fakeRuntime) Pids(context.Context, string) ([]int, error) {
	if err := f.call("Pids"); err != nil {
		return nil, err
	}
	return []int{1, 42}, nil
}
func (f *fakeRuntime) Dump(_ context.Context, _, imageDir, workDir string) error {
	if err := f.call("Dump"); err != nil {
		_ = os.WriteFile(filepath.Join(imageDir, "pages-1.img"), []byte("half"), 0o600)
		_ = os.WriteFile(filepath.Join(workDir, "dump.log"), []byte("(00.000001) Version: 4.1.1 (gitid 0)\n(00.2) Error (criu/files-reg.c:1031): Can't dump ghost file\n"), 0o600)
		return err
	}
	_ = os.WriteFile(filepath.Join(workDir, "dump.log"), []byte("(00.000001) Version: 4.1.1 (gitid 0)\n"), 0o600)
	return os.WriteFile(filepath.Join(imageDir, "inventory.img"), []byte("criu"), 0o600)
}

// fakeGPUs is the engine, as far as a checkpoint uses it.
type fakeGPUs struct {
	rt      *fakeRuntime
	failing string
	// restored is the last RestoreImage request.
	restored engine.ImageRestore
	// parked is the memory of a pod suspended before the checkpoint; 0: running.
	parked int64
}

func (f *fakeGPUs) Parked(types.UID) (int64, bool) { return f.parked, f.parked > 0 }

func (f *fakeGPUs) RestoreImage(_ context.Context, _ podmap.PodRef, req engine.ImageRestore) (engine.Result, error) {
	f.restored = req
	if err := f.rt.call("RestoreImage"); err != nil {
		return engine.Result{}, &engine.Error{Op: "restore", Cause: engine.CauseRestoreFailed, Err: err}
	}
	return engine.Result{Bytes: req.Bytes, GPUs: req.To, Steps: []engine.Step{{Name: engine.StepRestore, Bytes: req.Bytes}, {Name: engine.StepUnlock}}}, nil
}

func (f *fakeGPUs) Suspend(context.Context, podmap.PodRef, time.Duration) (engine.Result, error) {
	if err := f.rt.call("Suspend"); err != nil || f.failing == "Suspend" {
		return engine.Result{}, errors.New("lock timed out")
	}
	return engine.Result{Bytes: 3 << 30, Steps: []engine.Step{{Name: engine.StepLock}, {Name: engine.StepCheckpoint, Bytes: 3 << 30}}}, nil
}

func (f *fakeGPUs) Resume(context.Context, podmap.PodRef, []cuda.UUID, []cuda.UUID) (engine.Result, error) {
	return engine.Result{}, f.rt.call("ResumeGPU")
}

func TestCheckpoint(t *testing.T) {
	tests := []struct {
		name         string
		gpus         bool
		suspended    bool
		leaveRunning bool
		// frozen: the container is frozen already (a suspended pod without GPUs).
		frozen bool
		// keep: the request has a Keep step (recorded as the call "Keep").
		keep      bool
		failing   string
		wantCalls []string
		wantCause Cause
		wantMsg   string
	}{
		{name: "move", wantCalls: []string{"Pause", "Dump", "Stop"}},
		{name: "copy", leaveRunning: true, wantCalls: []string{"Pause", "Dump", "Resume"}},
		{name: "gpu move", gpus: true, wantCalls: []string{"Suspend", "Pause", "Dump", "Stop"}},
		{name: "gpu copy", gpus: true, leaveRunning: true, wantCalls: []string{"Suspend", "Pause", "Dump", "Resume", "ResumeGPU"}},
		{name: "criu fails", failing: "Dump", wantCalls: []string{"Pause", "Dump", "Resume"},
			wantCause: CauseDump, wantMsg: "criu's log says: (00.2) Error (criu/files-reg.c:1031): Can't dump ghost file"},
		{name: "criu fails with gpus", gpus: true, failing: "Dump", wantCalls: []string{"Suspend", "Pause", "Dump", "Resume", "ResumeGPU"}, wantCause: CauseDump},
		{name: "suspended gpu pod: its memory stays parked", gpus: true, suspended: true, leaveRunning: true, wantCalls: []string{"Pause", "Dump", "Resume"}},
		{name: "suspended gpu pod, criu fails: still suspended", gpus: true, suspended: true, failing: "Dump", wantCalls: []string{"Pause", "Dump", "Resume"}, wantCause: CauseDump},
		{name: "gpu lock fails", gpus: true, failing: "Suspend", wantCalls: []string{"Suspend"}, wantCause: CauseGPU, wantMsg: "moving gpu memory to host memory"},
		{name: "freeze fails", gpus: true, failing: "Pause", wantCalls: []string{"Suspend", "Pause", "ResumeGPU"}, wantCause: CauseUnsupported},
		{name: "stop fails", failing: "Stop", wantCalls: []string{"Pause", "Dump", "Stop", "Resume"}, wantCause: CauseInternal},
		{name: "move kept before the stop", keep: true, wantCalls: []string{"Pause", "Dump", "Keep", "Stop"}},
		{name: "gpu move kept before the stop", gpus: true, keep: true, wantCalls: []string{"Suspend", "Pause", "Dump", "Keep", "Stop"}},
		{name: "keep fails: the container runs on", keep: true, failing: "Keep", wantCalls: []string{"Pause", "Dump", "Keep", "Resume"},
			wantCause: CauseImageDir, wantMsg: "keeping the image: Keep exploded"},
		{name: "keep fails with gpus: memory back", gpus: true, keep: true, failing: "Keep", wantCalls: []string{"Suspend", "Pause", "Dump", "Keep", "Resume", "ResumeGPU"},
			wantCause: CauseImageDir},
		{name: "frozen container: not paused again", frozen: true, keep: true, wantCalls: []string{"Dump", "Keep", "Stop"}},
		{name: "frozen container, keep fails: it stays frozen", frozen: true, keep: true, failing: "Keep", wantCalls: []string{"Dump", "Keep"},
			wantCause: CauseImageDir},
		{name: "frozen container, stop fails: it stays frozen", frozen: true, failing: "Stop", wantCalls: []string{"Dump", "Stop"}, wantCause: CauseInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &fakeRuntime{failing: tt.failing, ctr: Container{ID: "c1", Name: "trainer", Image: "img", Runtime: "io.containerd.kybernate.v1",
				Pod: image.Pod{Namespace: "ml", Name: "train", UID: "u1"}}}
			var gpus GPUs
			if tt.gpus {
				rt.ctr.Annotations = map[string]string{kv1.AnnotationGPUs: gpu}
				fg := &fakeGPUs{rt: rt}
				if tt.suspended {
					fg.parked = 3 << 30
				}
				gpus = fg
			}
			clk := testingclock.NewFakeClock(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC))
			versions := func(context.Context) (string, int32) { return "580.95.05", 13000 }
			c := New(Config{Node: "n1"}, rt, gpus, versions, clk)
			parent := t.TempDir()
			dir := filepath.Join(parent, "img")
			req := Request{Pod: image.Pod{Namespace: "ml", Name: "train"}, Container: "trainer", ImageDir: dir, LeaveRunning: tt.leaveRunning, Frozen: tt.frozen}
			if tt.keep {
				req.Keep = func(_ context.Context, kept string) error {
					if _, err := image.Verify(kept); err != nil {
						t.Errorf("Keep got an incomplete image: %v", err)
					}
					return rt.call("Keep")
				}
			}
			res, err := c.Checkpoint(t.Context(), req)
			if diff := cmp.Diff(tt.wantCalls, rt.calls); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
			if tt.wantCause != "" {
				if CauseOf(err) != tt.wantCause || !strings.Contains(err.Error(), tt.wantMsg) {
					t.Fatalf("error %v (cause %s), want cause %s containing %q", err, CauseOf(err), tt.wantCause, tt.wantMsg)
				}
				var e *Error
				if !errors.As(err, &e) || !e.RolledBack {
					t.Errorf("error %v: not rolled back", err)
				}
				if entries, _ := os.ReadDir(parent); len(entries) != 0 {
					t.Errorf("left behind: %v", entries)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m, err := image.Verify(dir)
			if err != nil {
				t.Fatal(err)
			}
			want := image.Metadata{Version: image.Version, Pod: image.Pod{Namespace: "ml", Name: "train", UID: "u1"},
				Container: image.Container{Name: "trainer", ID: "c1", Image: "img"}, CRIUVersion: "4.1.1",
				DriverVersion: "580.95.05", CUDADriverVersion: 13000, Node: "n1", Created: clk.Now(),
				Files: []image.File{{Name: "inventory.img", Size: 4}}}
			if tt.gpus {
				want.GPUs, want.VRAMBytes = []string{gpu}, 3<<30
			}
			if diff := cmp.Diff(want, m, cmpIgnoreSum); diff != "" {
				t.Errorf("metadata (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(m, res.Metadata); diff != "" {
				t.Errorf("result metadata (-file +result):\n%s", diff)
			}
			if entries, _ := os.ReadDir(parent); len(entries) != 1 {
				t.Errorf("next to the image: %v, want only the image (criu's work folder deleted)", entries)
			}
		})
	}
}

// cmpIgnoreSum ignores file checksums (image's own tests check them).
var cmpIgnoreSum = cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".SHA256" }, cmp.Ignore())

func TestCheckpointRefusals(t *testing.T) {
	parent := t.TempDir()
	existing := filepath.Join(parent, "existing")
	if err := os.Mkdir(existing, 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		runtime   string
		gpus      bool
		dir       string
		wantCause Cause
		wantMsg   string
	}{
		{name: "relative", dir: "img", wantCause: CauseInvalid, wantMsg: "want a clean absolute path"},
		{name: "exists", dir: existing, wantCause: CauseExists, wantMsg: "exists already"},
		{name: "no parent", dir: filepath.Join(parent, "a", "b"), wantCause: CauseImageDir, wantMsg: "no such file or directory"},
		{name: "other runtime", runtime: "io.containerd.kata.v2", dir: filepath.Join(parent, "x"), wantCause: CauseUnsupported, wantMsg: "runtimeClassName: kybernate"},
		{name: "gpus without driver", gpus: true, dir: filepath.Join(parent, "y"), wantCause: CauseUnsupported, wantMsg: "CUDA driver is not usable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &fakeRuntime{ctr: Container{ID: "c1", Runtime: "io.containerd.runc.v2", Pod: image.Pod{Namespace: "ml", Name: "train"}}}
			if tt.runtime != "" {
				rt.ctr.Runtime = tt.runtime
			}
			if tt.gpus {
				rt.ctr.Annotations = map[string]string{kv1.AnnotationGPUs: gpu}
			}
			c := New(Config{}, rt, nil, nil, testingclock.NewFakeClock(time.Now()))
			_, err := c.Checkpoint(t.Context(), Request{Pod: image.Pod{Namespace: "ml", Name: "train"}, ImageDir: tt.dir})
			if CauseOf(err) != tt.wantCause || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("error %v (cause %s), want cause %s containing %q", err, CauseOf(err), tt.wantCause, tt.wantMsg)
			}
			if len(rt.calls) != 0 {
				t.Errorf("calls %v, want none", rt.calls)
			}
		})
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 1 {
		t.Errorf("left behind: %v", entries)
	}
}
