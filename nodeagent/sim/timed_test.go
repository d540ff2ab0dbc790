package sim

import (
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/cuda/fake"
)

func TestDuration(t *testing.T) {
	tests := []struct {
		bytes uint64
		rate  float64
		want  time.Duration
	}{
		{bytes: 70e9, rate: 2.2e9, want: 31818181818},
		{bytes: 6e9, rate: 6e9, want: time.Second},
		{bytes: 1, rate: 0, want: 0},
	}
	for _, tt := range tests {
		if got := Duration(tt.bytes, tt.rate); got != tt.want {
			t.Errorf("Duration(%d, %g) = %v, want %v", tt.bytes, tt.rate, got, tt.want)
		}
	}
}

func TestTimedDriverTakesItsTime(t *testing.T) {
	clk := testingclock.NewFakeClock(epoch)
	devs := fake.Devices(1, "NVIDIA H200", 141<<30)
	d := &TimedDriver{Driver: fake.New(devs...), CheckpointRate: 2e9, RestoreRate: 5e9, Clock: clk}
	if err := d.Init(); err != nil {
		t.Fatal(err)
	}
	if err := d.AddProcess(7, devs[0].UUID, 10e9); err != nil {
		t.Fatal(err)
	}
	if err := d.CheckpointProcessLock(7, 0); err != nil {
		t.Fatal(err)
	}

	// run starts a call and returns once it is waiting on the clock.
	run := func(call func() error) chan error {
		done := make(chan error, 1)
		go func() { done <- call() }()
		for !clk.HasWaiters() {
			time.Sleep(time.Millisecond)
		}
		return done
	}
	state := func() cuda.ProcessState { p, _ := d.Process(7); return p.State }

	done := run(func() error { return d.CheckpointProcessCheckpoint(7) })
	clk.Step(4999 * time.Millisecond)
	if s := state(); s != cuda.ProcessStateLocked {
		t.Errorf("state before 10 GB / 2 GB/s = 5s passed: %v, want LOCKED", s)
	}
	clk.Step(time.Millisecond)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s := state(); s != cuda.ProcessStateCheckpointed {
		t.Errorf("state after 5s: %v, want CHECKPOINTED", s)
	}

	done = run(func() error { return d.CheckpointProcessRestore(7, nil) })
	clk.Step(1999 * time.Millisecond)
	if s := state(); s != cuda.ProcessStateCheckpointed {
		t.Errorf("state before 10 GB / 5 GB/s = 2s passed: %v, want CHECKPOINTED", s)
	}
	clk.Step(time.Millisecond)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s := state(); s != cuda.ProcessStateLocked {
		t.Errorf("state after 2s: %v, want LOCKED", s)
	}
}
