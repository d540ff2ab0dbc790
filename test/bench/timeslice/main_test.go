package main

import (
	"testing"
	"time"
)

// A small trace under each policy: every job finishes, only kill-preemption loses work,
// Kybernate moves memory while the others never do, spreads pods onto unused GPUs unless
// disabled, and failed suspensions lose nothing.
func TestPolicies(t *testing.T) {
	o := options{nodes: 1, gpus: 4, gpuGiB: 80, load: 3, hours: 6, seed: 7, quantum: time.Minute,
		checkpointGBps: 2.2, restoreGBps: 6, migrateGBps: 1.25, appCheckpoint: 30 * time.Minute, suspendFailures: 0.1, spreadingDelay: 30 * time.Second}
	o.defaults()
	trace := makeTrace(o)
	byName := map[string]result{}
	for _, p := range policies {
		r := run(o, trace, p)
		byName[p.name] = r
		for _, j := range r.jobs {
			if j.state != done {
				t.Fatalf("%s: job %d not done (state %d, progress %.0f of %.0f s)", p.name, j.id, j.state, j.progress, j.need)
			}
			if j.finished-j.submit < j.need {
				t.Errorf("%s: job %d finished in %.0f s but needs %.0f s of compute", p.name, j.id, j.finished-j.submit, j.need)
			}
		}
		if busy := r.stats.busyGPUSeconds / r.stats.contendedGPUSeconds; busy <= 0 || busy > 1 {
			t.Errorf("%s: busy fraction %.3f", p.name, busy)
		}
	}
	if byName["kill"].stats.lostSeconds <= 0 {
		t.Error("kill-preemption lost no work: the trace has no preemption")
	}
	for _, name := range []string{"kybernate", "kybernate+spread-across", "kybernate-no-spreading", "kybernate-no-migration", "fifo"} {
		if lost := byName[name].stats.lostSeconds; lost != 0 {
			t.Errorf("%s lost %.0f s of work", name, lost)
		}
	}
	if byName["kybernate"].stats.failedSuspensions == 0 {
		t.Error("no suspension failed at a failure rate of 10%")
	}
	if byName["kybernate"].stats.moves == 0 || byName["fifo"].stats.moves != 0 {
		t.Errorf("moves: kybernate %d, fifo %d", byName["kybernate"].stats.moves, byName["fifo"].stats.moves)
	}
	// Spreading is the controllers' rule (gpupod.Spread): the system's row spreads, the row
	// with disableSpreading does not.
	if byName["kybernate"].stats.spreadMoves == 0 || byName["kybernate-no-spreading"].stats.spreadMoves != 0 {
		t.Errorf("spreading moves: kybernate %d, with spreading disabled %d", byName["kybernate"].stats.spreadMoves, byName["kybernate-no-spreading"].stats.spreadMoves)
	}
	if k, f := byName["kybernate"].stats, byName["fifo"].stats; k.jainSum/k.jainWeight <= f.jainSum/f.jainWeight {
		t.Errorf("time slicing is not fairer than FIFO: Jain %.3f vs %.3f", k.jainSum/k.jainWeight, f.jainSum/f.jainWeight)
	}
}
