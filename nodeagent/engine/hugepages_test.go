package engine

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/cuda/fake"
)

// recordingWindow is a HugePageWindow that records its holders and whether each driver call
// ran inside it.
type recordingWindow struct {
	mu      sync.Mutex
	holders int
	opens   int
	openErr error
}

func (w *recordingWindow) Open(context.Context) (func(), error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.openErr != nil {
		return nil, w.openErr
	}
	w.holders++
	w.opens++
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.holders--
	}, nil
}

func (w *recordingWindow) open() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.holders > 0
}

// inside records, per driver call name, whether the window was open when it ran.
func inside(w *recordingWindow, calls map[string][]bool, mu *sync.Mutex, fail fake.Hook) fake.Hook {
	return func(c string, pid int) error {
		mu.Lock()
		calls[c] = append(calls[c], w.open())
		mu.Unlock()
		if fail != nil {
			return fail(c, pid)
		}
		return nil
	}
}

func TestHugePageWindowAroundCheckpoints(t *testing.T) {
	for _, tc := range []struct {
		name       string
		openErr    error
		fail       fake.Hook
		wantErr    bool
		wantInside []bool // per checkpoint call
		wantOpens  int
	}{
		{name: "open during the checkpoints only", wantInside: []bool{true, true}, wantOpens: 1},
		{name: "a window that cannot open costs nothing but speed", openErr: errors.New("read-only sysfs"), wantInside: []bool{false, false}},
		{name: "closed after a failed checkpoint", wantErr: true, wantOpens: 1, wantInside: []bool{true, true},
			fail: failOn(fake.CallCheckpoint, 101, cuda.NewError("cuCheckpointProcessCheckpoint", cuda.ErrorUnknown), 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &recordingWindow{openErr: tc.openErr}
			h := newHarness(t, 100*gib, Config{HugePages: w})
			calls := map[string][]bool{}
			var mu sync.Mutex
			h.d.SetHook(inside(w, calls, &mu, tc.fail))
			_, err := h.e.Suspend(t.Context(), train, 0)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Suspend: %v, want error %v", err, tc.wantErr)
			}
			if w.open() {
				t.Error("window still open after the suspend")
			}
			if w.opens != tc.wantOpens {
				t.Errorf("window opened %d times, want %d", w.opens, tc.wantOpens)
			}
			mu.Lock()
			defer mu.Unlock()
			if got := calls[fake.CallCheckpoint]; !slices.Equal(got, tc.wantInside) {
				t.Errorf("checkpoint calls inside the window = %v, want %v", got, tc.wantInside)
			}
			for _, b := range calls[fake.CallLock] {
				if b {
					t.Error("a lock ran inside the window; it should cover the checkpoints only")
				}
			}
			if tc.wantErr {
				return
			}
			calls[fake.CallRestore] = nil
			mu.Unlock()
			_, err = h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, nil)
			mu.Lock()
			if err != nil {
				t.Fatalf("Resume: %v", err)
			}
			if w.opens != tc.wantOpens {
				t.Errorf("a resume opened the window (%d opens, want %d)", w.opens, tc.wantOpens)
			}
		})
	}
}
