package checkpoint

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/image"
)

const gpuB = "GPU-bbbbbbbb-0000-0000-0000-000000000002"

// writeImage writes an image folder with metadata naming gpus.
func writeImage(t *testing.T, gpus ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "img")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pages-1.img"), []byte("pages"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := image.Write(dir, image.Metadata{GPUs: gpus, VRAMBytes: 5 << 30}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestRestore(t *testing.T) {
	clk := testingclock.NewFakeClock(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC))
	tests := []struct {
		name        string
		gpus        []string // of the image
		noDriver    bool
		req         RestoreRequest
		corrupt     string // pages-1.img's new content
		failing     string
		wantCause   Cause
		wantErr     string
		wantCalls   []string
		wantRestore *engine.ImageRestore
	}{
		{name: "image without gpus: nothing to do", req: RestoreRequest{ContainerID: "c"}},
		{name: "onto the target gpus", gpus: []string{gpu}, req: RestoreRequest{ContainerID: "c", TargetGPUs: []string{gpuB}},
			wantCalls:   []string{"Pids", "RestoreImage"},
			wantRestore: &engine.ImageRestore{PIDs: []int{1, 42}, From: []cuda.UUID{mustUUID(gpu)}, To: []cuda.UUID{mustUUID(gpuB)}, Bytes: 5 << 30}},
		{name: "no targets: the image's gpus", gpus: []string{gpu}, req: RestoreRequest{ContainerID: "c"},
			wantCalls:   []string{"Pids", "RestoreImage"},
			wantRestore: &engine.ImageRestore{PIDs: []int{1, 42}, From: []cuda.UUID{mustUUID(gpu)}, To: []cuda.UUID{mustUUID(gpu)}, Bytes: 5 << 30}},
		{name: "missing image", req: RestoreRequest{ImageDir: "/nonexistent/img", ContainerID: "c"}, wantCause: CauseNotFound},
		{name: "corrupt image: a file cut short", gpus: []string{gpu}, corrupt: "pag", req: RestoreRequest{ContainerID: "c"}, wantCause: CauseImage, wantErr: "pages-1.img"},
		// The shim verified the checksums before runc read the files; only the metadata is used here.
		{name: "a file's bytes changed at its size after the runc restore: not hashed again", gpus: []string{gpu}, corrupt: "PAGES",
			req: RestoreRequest{ContainerID: "c"}, wantCalls: []string{"Pids", "RestoreImage"},
			wantRestore: &engine.ImageRestore{PIDs: []int{1, 42}, From: []cuda.UUID{mustUUID(gpu)}, To: []cuda.UUID{mustUUID(gpu)}, Bytes: 5 << 30}},
		{name: "no driver", gpus: []string{gpu}, noDriver: true, req: RestoreRequest{ContainerID: "c"}, wantCause: CauseUnsupported},
		{name: "no container", gpus: []string{gpu}, req: RestoreRequest{}, wantCause: CauseInvalid},
		{name: "bad target", gpus: []string{gpu}, req: RestoreRequest{ContainerID: "c", TargetGPUs: []string{"GPU-nope"}}, wantCause: CauseInvalid},
		{name: "two targets for one gpu", gpus: []string{gpu}, req: RestoreRequest{ContainerID: "c", TargetGPUs: []string{gpu, gpuB}},
			wantCause: CauseInvalid, wantErr: "2 target gpus for an image of 1 gpus"},
		{name: "container's processes cannot be listed", gpus: []string{gpu}, req: RestoreRequest{ContainerID: "c"}, failing: "Pids",
			wantCause: CauseNotFound, wantCalls: []string{"Pids"}},
		{name: "gpu restore fails", gpus: []string{gpu}, req: RestoreRequest{ContainerID: "c"}, failing: "RestoreImage",
			wantCause: CauseGPU, wantErr: "RestoreFailed", wantCalls: []string{"Pids", "RestoreImage"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := &fakeRuntime{failing: tt.failing}
			g := &fakeGPUs{rt: rt}
			var gpus GPUs = g
			if tt.noDriver {
				gpus = nil
			}
			c := New(Config{Node: "n"}, rt, gpus, nil, clk)
			req := tt.req
			if req.ImageDir == "" {
				req.ImageDir = writeImage(t, tt.gpus...)
			}
			if tt.corrupt != "" {
				if err := os.WriteFile(filepath.Join(req.ImageDir, "pages-1.img"), []byte(tt.corrupt), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			before := folderContents(t, req.ImageDir)
			res, err := c.Restore(t.Context(), req)
			if tt.wantCause != "" {
				var e *Error
				if CauseOf(err) != tt.wantCause || !strings.Contains(err.Error(), tt.wantErr) || !errors.As(err, &e) || !e.Restore {
					t.Errorf("error %v, want cause %s containing %q, a restore error", err, tt.wantCause, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("Restore: %v", err)
			}
			if diff := cmp.Diff(tt.wantCalls, rt.calls); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
			if tt.wantRestore != nil {
				if diff := cmp.Diff(*tt.wantRestore, g.restored); diff != "" {
					t.Errorf("engine request (-want +got):\n%s", diff)
				}
				if res.Result.Steps[0].Name != StepPids || res.Result.Bytes != 5<<30 {
					t.Errorf("result %+v", res.Result)
				}
			}
			// Nothing is ever deleted or changed: the same files with the same contents.
			if diff := cmp.Diff(before, folderContents(t, req.ImageDir)); diff != "" {
				t.Errorf("image folder changed (-before +after):\n%s", diff)
			}
		})
	}
}

// folderContents maps every file and folder under dir (relative paths) to its content's
// SHA-256, "dir" for a folder; empty when dir does not exist.
func folderContents(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if p == dir && errors.Is(err, fs.ErrNotExist) {
			return fs.SkipAll // no folder: empty, and it must stay so
		}
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if d.IsDir() {
			out[rel] = "dir"
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		out[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustUUID(s string) cuda.UUID {
	u, err := cuda.ParseUUID(s)
	if err != nil {
		panic(err)
	}
	return u
}
