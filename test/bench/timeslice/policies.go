package main

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/migrate"
	"github.com/kybernate/kybernate/scheduler/timeslice"
)

// ---------------------------------------------------------------- policies

var fifoPolicy = policy{name: "fifo", description: "no preemption (FIFO by priority, then arrival)", step: func(s *sim) {
	for _, j := range s.queue() {
		if g := s.bestFit(j.vram, -1); g >= 0 {
			s.start(j, g)
		}
	}
}}

var killPolicy = policy{name: "kill", description: "kill-preemption (default scheduler: victims deleted, restart from their last checkpoint)", step: func(s *sim) {
	for _, j := range s.queue() {
		if g := s.bestFit(j.vram, -1); g >= 0 {
			s.start(j, g)
			continue
		}
		// The GPU where deleting the fewest lower-priority jobs (lowest priority, least work
		// lost first) makes room.
		var bestVictims []*job
		bestGPU := -1
		for g := range s.gpus {
			var cands []*job
			for _, v := range s.jobs {
				if v.gpu == g && v.state == resident && v.prio < j.prio {
					cands = append(cands, v)
				}
			}
			slices.SortFunc(cands, func(a, b *job) int {
				return cmp.Or(cmp.Compare(a.prio, b.prio), cmp.Compare(a.progress-a.lastCkpt, b.progress-b.lastCkpt))
			})
			free := s.o.gpuGiB*gib - s.gpus[g].used
			for i, v := range cands {
				free += v.vram
				if free >= j.vram {
					if bestGPU < 0 || i+1 < len(bestVictims) {
						bestGPU, bestVictims = g, cands[:i+1]
					}
					break
				}
			}
		}
		if bestGPU < 0 {
			continue
		}
		for _, v := range bestVictims {
			s.stats.lostSeconds += v.progress - v.lastCkpt
			s.gpus[v.gpu].used -= v.vram
			v.progress, v.state, v.gpu = v.lastCkpt, pending, -1
		}
		s.start(j, bestGPU)
	}
}}

// The system's policy as the controllers of this commit implement it, and variants of it.
var (
	kybernatePolicy = policy{name: "kybernate", description: "Kybernate as built: suspension instead of deletion, equal priorities take turns, migration to other nodes, pods spread onto unused GPUs of their node (the spreading controller's rule, gpupod.Spread)", step: func(s *sim) {
		kybernateStep(s)
		s.migrate()
		s.spread(false)
	}}
	spreadAcrossPolicy = policy{name: "kybernate+spread-across", description: "Kybernate spreading onto unused GPUs of other nodes too (a migration; a rule of this model, the controllers spread on a node only)", step: func(s *sim) {
		kybernateStep(s)
		s.migrate()
		s.spread(true)
	}}
	noSpreadPolicy = policy{name: "kybernate-no-spreading", description: "Kybernate with spreading disabled (disableSpreading)", step: func(s *sim) {
		kybernateStep(s)
		s.migrate()
	}}
	noMigrationPolicy = policy{name: "kybernate-no-migration", description: "Kybernate with migration disabled (disableMigration)", step: func(s *sim) {
		kybernateStep(s)
		s.spread(false)
	}}
)

var policies = []policy{kybernatePolicy, spreadAcrossPolicy, noSpreadPolicy, noMigrationPolicy, killPolicy, fifoPolicy}

// migrate moves suspended jobs whose node has no room to a GPU of another node, by the
// migration controller's rule: once a job has waited migrationMinWait and moving its memory
// (migrate.Estimate at migrationBytesPerSecond) takes less than it has waited. The move itself
// costs the image transfer (-migrate-gbps) and the restore.
func (s *sim) migrate() {
	for _, j := range s.waiting(func(j *job) bool { return j.state == suspended }) {
		if s.bestFit(j.vram, j.node) >= 0 {
			continue // its own node has room: it resumes there
		}
		waited := dur(s.t - j.waitFrom)
		if waited < s.args.MigrationMinWait.Duration || migrate.Estimate(int64(j.vram), s.args.MigrationBytesPerSecond) > waited {
			continue
		}
		g := s.bestFit(j.vram, -1)
		if g < 0 {
			continue
		}
		s.gpus[g].used += j.vram
		j.gpu, j.node, j.state = g, s.gpus[g].node, movingIn
		j.lastResume = math.Ceil(j.vram / (s.o.restoreGBps * 1e9))
		j.moveEnd = s.t + math.Ceil(j.vram/(s.o.migrateGBps*1e9)) + j.lastResume
		s.stats.moves++
	}
}

// spread moves jobs that share their GPU's compute onto GPUs nothing uses, by the spreading
// controller's rule (gpupod.Spread, the same code): on its node a suspend and a resume onto the
// other GPU; with acrossNodes, from another node a checkpoint and a restore there (what the
// controllers do not do). As the controller: a GPU is unused when no job holds memory there,
// on a node where no job moves, none waits, and every resident job has been on its GPU for
// spreadingDelay.
func (s *sim) spread(acrossNodes bool) {
	settled := make([]bool, s.o.nodes)
	for n := range settled {
		settled[n] = true
	}
	delay := s.args.SpreadingDelay.Seconds()
	for _, j := range s.jobs {
		if j.state == movingIn || j.state == movingOut || j.state == suspended {
			settled[j.node] = false
		}
		if j.state == resident && s.t < j.turnAt+delay {
			settled[j.node] = false
			s.nextTurn = math.Min(s.nextTurn, j.turnAt+delay)
		}
		if j.state == pending && j.nominated >= 0 {
			settled[j.nominated] = false
		}
	}
	gpus := make([]gpupod.SpreadGPU, len(s.gpus))
	for g, gp := range s.gpus {
		gpus[g] = gpupod.SpreadGPU{Node: fmt.Sprint(gp.node), Total: int64(s.o.gpuGiB * gib), Unused: settled[gp.node]}
	}
	var pods []gpupod.SpreadPod
	var jobs []*job
	for _, j := range s.jobs {
		if j.gpu < 0 {
			continue
		}
		gpus[j.gpu].Unused = false
		if j.state == resident || j.state == movingIn {
			pods = append(pods, gpupod.SpreadPod{GPU: j.gpu, Bytes: int64(j.vram), Movable: j.state == resident})
			jobs = append(jobs, j)
		}
	}
	for _, m := range gpupod.Spread(gpus, pods, acrossNodes) {
		j, g := jobs[m.Pod], m.GPU
		s.gpus[j.gpu].used -= j.vram
		s.gpus[g].used += j.vram
		if s.gpus[j.gpu].node == s.gpus[g].node {
			j.moveEnd = s.t + math.Ceil(j.vram/(s.o.checkpointGBps*1e9)+j.vram/(s.o.restoreGBps*1e9))
		} else {
			j.moveEnd = s.t + math.Ceil(j.vram/(s.o.migrateGBps*1e9)+j.vram/(s.o.restoreGBps*1e9))
		}
		j.gpu, j.node, j.state = g, s.gpus[g].node, movingIn
		s.stats.moves += 2
		s.stats.spreadMoves++
	}
}

func kybernateStep(s *sim) {
	// Waiting jobs of each node (nominated pending and suspended) get freed memory first,
	// highest priority, then least GPU time, then longest waiting (the resume controller).
	for n := range s.o.nodes {
		for _, j := range s.waiting(waitsOn(n)) {
			if g := s.bestFit(j.vram, n); g >= 0 {
				if j.state == pending {
					s.start(j, g)
				} else {
					s.resume(j, g)
				}
			}
		}
	}
	// New jobs: place, else suspend lower priority (CheckpointPreemption), else join the
	// rotation of the node where equal-priority jobs have the fewest waiting.
	for _, j := range s.queue() {
		// A nominated job binds wherever it fits, as the scheduler retries it on every node.
		if g := s.bestFit(j.vram, -1); g >= 0 {
			s.start(j, g)
			continue
		}
		if j.nominated >= 0 {
			continue
		}
		if s.preempt(j) {
			continue
		}
		best, bestWaiting := -1, math.MaxInt
		for n := range s.o.nodes {
			peers, waiting := 0, 0
			for _, o := range s.jobs {
				if o.prio == j.prio && o.state == resident && o.node == n {
					peers++
				}
				if o.prio == j.prio && waitsOn(n)(o) {
					waiting++
				}
			}
			if peers > 0 && waiting < bestWaiting {
				best, bestWaiting = n, waiting
			}
		}
		j.nominated = best
	}
	// Turns (the time-slice controller).
	s.nextTurn = math.Inf(1)
	for n := range s.o.nodes {
		s.rotate(n)
	}
}

// preempt suspends the cheapest set of lower-priority jobs on one GPU that makes room for j
// and nominates j to its node.
func (s *sim) preempt(j *job) bool {
	bestGPU, bestBytes := -1, math.Inf(1)
	var bestVictims []*job
	for g := range s.gpus {
		var cands []*job
		for _, v := range s.jobs {
			if v.gpu == g && v.state == resident && v.prio < j.prio {
				cands = append(cands, v)
			}
		}
		slices.SortFunc(cands, func(a, b *job) int { return cmp.Or(cmp.Compare(a.vram, b.vram), cmp.Compare(a.prio, b.prio)) })
		free := s.o.gpuGiB*gib - s.gpus[g].used
		for _, v := range s.jobs {
			if v.gpu == g && v.state == movingOut {
				free += v.vram // already leaving
			}
		}
		var bytes float64
		for i, v := range cands {
			free += v.vram
			bytes += v.vram
			if free >= j.vram {
				if bytes < bestBytes {
					bestGPU, bestBytes, bestVictims = g, bytes, cands[:i+1]
				}
				break
			}
		}
	}
	if bestGPU < 0 {
		return false
	}
	for _, v := range bestVictims {
		s.suspend(v, j)
	}
	j.nominated = s.gpus[bestGPU].node
	return true
}

// rotate ends the turns that are due on node n: a running job whose quantum has passed gives its
// GPU to the equal-priority waiting job with the least GPU time, if that has had less.
func (s *sim) rotate(n int) {
	waiting := s.waiting(waitsOn(n))
	// As the controller: the turns that end first yield, the fewest that make room; a set whose
	// turns have not all ended yet is held for the waiting job.
	given := map[*job]bool{}
	end := func(r *job) float64 {
		return r.turnAt + timeslice.Quantum(s.args, &v1.Pod{}, timeslice.Usage{MoveCost: s.moveCost(r)}).Seconds()
	}
	fits := func(w *job, set []*job) bool {
		freed := map[int]float64{}
		for _, r := range set {
			freed[r.gpu] += r.vram
		}
		for g, gp := range s.gpus {
			if gp.node == n && s.o.gpuGiB*gib-gp.used+freed[g] >= w.vram {
				return true
			}
		}
		return false
	}
	for _, w := range waiting {
		var cands []*job
		for _, r := range s.jobs {
			if r.state != resident || r.node != n || given[r] || r.prio != w.prio {
				continue
			}
			if r.gpuTime <= w.gpuTime {
				// It will have had more by then.
				s.nextTurn = math.Min(s.nextTurn, math.Max(end(r), s.t+w.gpuTime-r.gpuTime+1))
				continue
			}
			cands = append(cands, r)
		}
		slices.SortFunc(cands, func(a, b *job) int { return cmp.Or(cmp.Compare(end(a), end(b)), cmp.Compare(b.gpuTime, a.gpuTime)) })
		var set []*job
		for k := 1; k <= len(cands); k++ {
			if fits(w, cands[:k]) {
				set = slices.Clone(cands[:k])
				break
			}
		}
		if set == nil {
			continue
		}
		for i := len(set) - 2; i >= 0; i-- {
			if fewer := slices.Delete(slices.Clone(set), i, i+1); fits(w, fewer) {
				set = fewer
			}
		}
		due := s.t
		for _, r := range set {
			given[r] = true
			due = math.Max(due, end(r))
		}
		if s.t < due {
			s.nextTurn = math.Min(s.nextTurn, due)
			continue
		}
		for _, r := range set {
			s.suspend(r, nil)
		}
	}
}

// waiting returns the jobs that match in the order they get GPUs: highest priority, then the
// least GPU time, then the longest waiting (timeslice.NextFirst, as the resume and time-slice
// controllers order them).
func (s *sim) waiting(match func(*job) bool) []*job {
	var out []*job
	for _, j := range s.jobs {
		if match(j) {
			out = append(out, j)
		}
	}
	slices.SortFunc(out, func(a, b *job) int {
		return timeslice.NextFirst(a.prio, b.prio, dur(a.gpuTime), dur(b.gpuTime), secs(a.waitSince()), secs(b.waitSince()))
	})
	return out
}

// waitsOn matches the jobs waiting for node n: suspended there, or pending and nominated to it.
func waitsOn(n int) func(*job) bool {
	return func(j *job) bool {
		return (j.state == suspended && j.node == n) || (j.state == pending && j.nominated == n)
	}
}

func (j *job) waitSince() float64 {
	if j.state == suspended {
		return j.waitFrom
	}
	return j.submit
}

func dur(seconds float64) time.Duration { return time.Duration(seconds * float64(time.Second)) }

var epoch = time.Unix(0, 0)

func secs(seconds float64) time.Time { return epoch.Add(dur(seconds)) }
