package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/cuda/fake"
)

const testPID = 4242

var testGPUs = fake.Devices(2, "NVIDIA H200", 141*gib)

func newFake(t *testing.T) *fake.Driver {
	t.Helper()
	d := fake.New(testGPUs...)
	if err := d.AddProcess(testPID, testGPUs[0].UUID, 8*gib); err != nil {
		t.Fatal(err)
	}
	return d
}

// runMain runs Main with --json and returns the exit code and the records.
func runMain(t *testing.T, d cuda.Interface, args ...string) (int, []map[string]any, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(t.Context(), append(args, "--json"), Env{
		Stdout: &stdout,
		Stderr: &stderr,
		Open:   func() (cuda.Interface, error) { return d, nil },
	})
	return code, parseRecords(t, stdout.String()), stderr.String()
}

func parseRecords(t *testing.T, out string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("record %q: %v", line, err)
		}
		recs = append(recs, m)
	}
	return recs
}

// pick keeps the given keys of each record, dropping timings.
func pick(recs []map[string]any, keys ...string) []map[string]any {
	var out []map[string]any
	for _, r := range recs {
		m := map[string]any{}
		for _, k := range keys {
			if v, ok := r[k]; ok {
				m[k] = v
			}
		}
		out = append(out, m)
	}
	return out
}

func TestInfo(t *testing.T) {
	d := fake.New(testGPUs...)
	code, recs, stderr := runMain(t, d, "info")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	want := []map[string]any{
		{"event": "driver", "version": 13000.0, "cuda": "13.0", "checkpoint": true, "remap": true},
		{"event": "device", "index": 0.0, "uuid": "GPU-00000000-0000-0000-0000-000000000001", "name": "NVIDIA H200", "total_bytes": float64(141 * gib)},
		{"event": "device", "index": 1.0, "uuid": "GPU-00000000-0000-0000-0000-000000000002", "name": "NVIDIA H200", "total_bytes": float64(141 * gib)},
		{"event": "info", "devices": 2.0},
	}
	if diff := cmp.Diff(want, recs); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
}

func TestSuspendResume(t *testing.T) {
	type proc struct {
		State cuda.ProcessState
		GPU   cuda.UUID
		Host  uint64
	}
	gpu0, gpu1 := testGPUs[0].UUID, testGPUs[1].UUID
	tests := []struct {
		name     string
		setup    func(d *fake.Driver)
		args     [][]string
		wantCode []int
		keys     []string
		want     [][]map[string]any
		wantProc proc
	}{
		{
			name:     "suspend, resume in place",
			args:     [][]string{{"suspend", "--pid", "4242", "--bytes", "8589934592"}, {"resume", "--pid", "4242"}},
			wantCode: []int{ExitOK, ExitOK},
			keys:     []string{"event", "ok", "state", "bytes"},
			want: [][]map[string]any{
				{
					{"event": "lock", "ok": true},
					{"event": "checkpoint", "ok": true, "bytes": 8589934592.0},
					{"event": "suspend", "ok": true, "bytes": 8589934592.0, "state": "CHECKPOINTED"},
				},
				{
					{"event": "restore", "ok": true},
					{"event": "unlock", "ok": true},
					{"event": "resume", "ok": true, "state": "RUNNING"},
				},
			},
			wantProc: proc{State: cuda.ProcessStateRunning, GPU: gpu0},
		},
		{
			name: "suspend, resume onto the other gpu",
			args: [][]string{{"suspend", "--pid", "4242"},
				{"resume", "--pid", "4242", "--from", "0", "--to", gpu1.String()}},
			wantCode: []int{ExitOK, ExitOK},
			keys:     []string{"event", "ok", "pairs"},
			want: [][]map[string]any{
				{{"event": "lock", "ok": true}, {"event": "checkpoint", "ok": true}, {"event": "suspend", "ok": true}},
				{
					{"event": "pairs", "pairs": gpu0.String() + ">" + gpu1.String() + "," + gpu1.String() + ">" + gpu0.String()},
					{"event": "restore", "ok": true, "pairs": 2.0},
					{"event": "unlock", "ok": true},
					{"event": "resume", "ok": true},
				},
			},
			wantProc: proc{State: cuda.ProcessStateRunning, GPU: gpu1},
		},
		{
			name: "single pair refused, process stays checkpointed",
			args: [][]string{{"suspend", "--pid", "4242"},
				{"resume", "--pid", "4242", "--pair", gpu0.String() + "=" + gpu1.String()}},
			wantCode: []int{ExitOK, ExitError},
			keys:     []string{"event", "ok", "code_name", "state"},
			want: [][]map[string]any{
				{{"event": "lock", "ok": true}, {"event": "checkpoint", "ok": true}, {"event": "suspend", "ok": true, "state": "CHECKPOINTED"}},
				{
					{"event": "pairs"},
					{"event": "restore", "ok": false, "code_name": "CUDA_ERROR_INVALID_VALUE"},
					{"event": "resume", "ok": false, "state": "CHECKPOINTED"},
				},
			},
			wantProc: proc{State: cuda.ProcessStateCheckpointed, GPU: gpu0, Host: 8 * gib},
		},
		{
			name:     "lock times out on a busy process, which runs on",
			setup:    func(d *fake.Driver) { d.SetBusy(testPID, true) },
			args:     [][]string{{"suspend", "--pid", "4242", "--lock-timeout", "500ms"}},
			wantCode: []int{ExitError},
			keys:     []string{"event", "ok", "timeout", "code", "timeout_ms"},
			want: [][]map[string]any{
				{
					{"event": "lock", "ok": false, "timeout": true, "code": 600.0, "timeout_ms": 500.0},
					{"event": "suspend", "ok": false},
				},
			},
			wantProc: proc{State: cuda.ProcessStateRunning, GPU: gpu0},
		},
		{
			name: "failed checkpoint is rolled back",
			setup: func(d *fake.Driver) {
				d.SetFault(fake.CallCheckpoint, cuda.NewError("cuCheckpointProcessCheckpoint", cuda.ErrorUnknown))
			},
			args:     [][]string{{"suspend", "--pid", "4242"}},
			wantCode: []int{ExitError},
			keys:     []string{"event", "ok", "rollback", "failed_step"},
			want: [][]map[string]any{
				{
					{"event": "lock", "ok": true},
					{"event": "checkpoint", "ok": false},
					{"event": "unlock", "ok": true, "rollback": true},
					{"event": "suspend", "ok": false, "failed_step": "checkpoint"},
				},
			},
			wantProc: proc{State: cuda.ProcessStateRunning, GPU: gpu0},
		},
		{
			name:     "lock, state, unlock",
			args:     [][]string{{"lock", "--pid", "4242"}, {"state", "--pid", "4242"}, {"unlock", "--pid", "4242"}},
			wantCode: []int{ExitOK, ExitOK, ExitOK},
			keys:     []string{"event", "ok", "state", "restore_tid"},
			want: [][]map[string]any{
				{{"event": "lock", "ok": true}},
				{{"event": "state", "ok": true, "state": "LOCKED", "restore_tid": 4243.0}},
				{{"event": "unlock", "ok": true}},
			},
			wantProc: proc{State: cuda.ProcessStateRunning, GPU: gpu0},
		},
		{
			name:     "not a cuda process",
			args:     [][]string{{"state", "--pid", "77"}},
			wantCode: []int{ExitError},
			keys:     []string{"event", "ok", "code_name"},
			want:     [][]map[string]any{{{"event": "state", "ok": false, "code_name": "CUDA_ERROR_NOT_INITIALIZED"}}},
			wantProc: proc{State: cuda.ProcessStateRunning, GPU: gpu0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newFake(t)
			if tt.setup != nil {
				tt.setup(d)
			}
			for i, args := range tt.args {
				code, recs, stderr := runMain(t, d, args...)
				if code != tt.wantCode[i] {
					t.Fatalf("%v: exit %d, want %d; stderr: %s", args, code, tt.wantCode[i], stderr)
				}
				if diff := cmp.Diff(tt.want[i], pick(recs, tt.keys...)); diff != "" {
					t.Errorf("%v records (-want +got):\n%s", args, diff)
				}
			}
			p, _ := d.Process(testPID)
			if diff := cmp.Diff(tt.wantProc, proc{State: p.State, GPU: p.GPU, Host: p.HostBytes}); diff != "" {
				t.Errorf("process (-want +got):\n%s", diff)
			}
		})
	}
}

func TestUsage(t *testing.T) {
	tests := [][]string{
		{"suspend"},
		{"state"},
		{"lock"},
		{"unlock"},
		{"resume"},
		{"resume", "--pid", "1", "--to", "1"},
		{"resume", "--pid", "1", "--pair", "GPU-x"},
		{"nonsense"},
		{"state", "--pid", "1", "extra"},
		{"hold", "--gib", "0"},
	}
	for _, args := range tests {
		code, _, stderr := runMain(t, newFake(t), args...)
		if code != ExitUsage {
			t.Errorf("%v: exit %d, want %d; stderr: %s", args, code, ExitUsage, stderr)
		}
	}
}

func TestMemcpyBench(t *testing.T) {
	code, recs, stderr := runMain(t, fake.New(testGPUs...), "memcpy-bench", "--gib", "0.001", "--iters", "2")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	want := []map[string]any{
		{"event": "host_alloc", "kind": "pinned"},
		{"event": "host_alloc", "kind": "pageable"},
		{"event": "memcpy", "kind": "pinned", "dir": "htod", "iters": 2.0},
		{"event": "memcpy", "kind": "pinned", "dir": "dtoh", "iters": 2.0},
		{"event": "memcpy", "kind": "pageable", "dir": "htod", "iters": 2.0},
		{"event": "memcpy", "kind": "pageable", "dir": "dtoh", "iters": 2.0},
	}
	if diff := cmp.Diff(want, pick(recs, "event", "kind", "dir", "iters")); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
}

// cancelOnReady cancels when a READY record has been written.
type cancelOnReady struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	cancel context.CancelFunc
}

func (w *cancelOnReady) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if bytes.Contains(p, []byte(`"READY"`)) {
		w.cancel()
	}
	return w.buf.Write(p)
}

func TestHold(t *testing.T) {
	d := fake.New(testGPUs...)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	out := &cancelOnReady{cancel: cancel}
	var stderr bytes.Buffer
	code := Main(ctx, []string{"hold", "--gpu", testGPUs[1].UUID.String(), "--gib", "0.001", "--block-mib", "1", "--json"},
		Env{Stdout: out, Stderr: &stderr, Open: func() (cuda.Interface, error) { return d, nil }})
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	recs := parseRecords(t, out.buf.String())
	want := []map[string]any{
		// 0.001 GiB rounds up to two 1 MiB blocks.
		{"event": "READY", "gpu": testGPUs[1].UUID.String(), "bytes": float64(2 * mib), "blocks": 2.0},
		{"event": "verify", "ok": true, "bad_blocks": 0.0, "blocks": 2.0, "reason": "exit"},
		{"event": "exit", "ok": true},
	}
	if diff := cmp.Diff(want, pick(recs, "event", "gpu", "bytes", "blocks", "ok", "bad_blocks", "reason")); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	if recs[0]["checksum"] != recs[1]["checksum"] {
		t.Errorf("checksum changed from %v to %v", recs[0]["checksum"], recs[1]["checksum"])
	}
	if used, _ := d.UsedMem(testGPUs[1].UUID); used != 0 {
		t.Errorf("gpu memory in use after hold = %d, want 0", used)
	}
}

func TestBufferDetectsCorruption(t *testing.T) {
	tests := []struct {
		name    string
		corrupt func(b *buffer) error
		wantBad int
	}{
		{name: "intact", corrupt: func(b *buffer) error { return nil }, wantBad: 0},
		{name: "one byte", corrupt: func(b *buffer) error {
			return b.lib.MemsetD8(b.ctx, b.blocks[2]+12345, 0xab, 1)
		}, wantBad: 1},
		{name: "blocks swapped", corrupt: func(b *buffer) error {
			x, y := make([]byte, b.block), make([]byte, b.block)
			if err := errors.Join(b.lib.MemcpyDtoH(b.ctx, x, b.blocks[0]), b.lib.MemcpyDtoH(b.ctx, y, b.blocks[3])); err != nil {
				return err
			}
			return errors.Join(b.lib.MemcpyHtoD(b.ctx, b.blocks[0], y), b.lib.MemcpyHtoD(b.ctx, b.blocks[3], x))
		}, wantBad: 2},
		{name: "two pages of a block swapped", corrupt: func(b *buffer) error {
			x, y := make([]byte, pageSize), make([]byte, pageSize)
			if err := errors.Join(b.lib.MemcpyDtoH(b.ctx, x, b.blocks[1]), b.lib.MemcpyDtoH(b.ctx, y, b.blocks[1]+pageSize)); err != nil {
				return err
			}
			return errors.Join(b.lib.MemcpyHtoD(b.ctx, b.blocks[1], y), b.lib.MemcpyHtoD(b.ctx, b.blocks[1]+pageSize, x))
		}, wantBad: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := fake.New(testGPUs...)
			if err := d.Init(); err != nil {
				t.Fatal(err)
			}
			ctx, err := d.PrimaryCtxRetain(0)
			if err != nil {
				t.Fatal(err)
			}
			b, err := newBuffer(d, ctx, 4*64*1024, 64*1024, 7)
			if err != nil {
				t.Fatal(err)
			}
			defer b.free()
			if err := b.fill(); err != nil {
				t.Fatal(err)
			}
			if err := tt.corrupt(b); err != nil {
				t.Fatal(err)
			}
			bad, err := b.verify()
			if err != nil {
				t.Fatal(err)
			}
			if bad != tt.wantBad {
				t.Errorf("verify found %d bad blocks, want %d", bad, tt.wantBad)
			}
		})
	}
}
