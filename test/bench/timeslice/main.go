// Command timeslice is a simulation benchmark of GPU time slicing: one oversubscribed trace of
// GPU jobs run under several policies, with the figures printed as a Markdown report.
//
//   - kybernate: the system's policy, by the rules of plugins/checkpointpreemption and the
//     resume, time-slice, migration and spreading controllers: a higher-priority job suspends
//     lower-priority ones at once; equal-priority jobs take turns of timeslice.Quantum (the
//     configured quantum, at least 10x the job's last measured suspend+resume once it has been
//     moved both ways), the waiting job with the least GPU time next (timeslice.NextFirst);
//     suspended jobs resume onto any GPU of their node, and move to another node once they have
//     waited migrationMinWait and longer than migrate.Estimate of their memory; on a node where
//     nothing waits or moves, a job that shares its GPU's compute moves onto a GPU nothing uses
//     (gpupod.Spread, the spreading controller's code: a suspend and a resume there). Each move
//     takes its time at the measured driver rates; a share of suspensions fails
//     (-suspend-failures): the move's time is spent, the job stays on its GPU with its turn
//     renewed (timeslice.Usage.TurnRenewed), a preemptor looks for other victims.
//   - kybernate+spread-across: the same, spreading onto unused GPUs of other nodes too (a
//     checkpoint and a restore there): a rule of this model that the controllers do not have.
//   - kybernate-no-spreading: the system with disableSpreading.
//   - kybernate-no-migration: the system with disableMigration (spreading on a node goes on).
//   - kill: the default scheduler's preemption: a higher-priority job deletes lower-priority
//     ones, which restart from their last application checkpoint (work since then is lost);
//     equal priorities wait.
//   - fifo: no preemption: jobs start by priority, then arrival, whenever they fit.
//
// It is a model, not the system: time advances in steps of one second, placement is best fit by
// VRAM, and jobs resident together on a GPU share its compute equally (the driver time-slices
// their contexts). Nothing here talks to a cluster.
package main

import (
	"cmp"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kybernate/kybernate/apis/config"
)

const gib = float64(1 << 30)

type options struct {
	nodes, gpus    int
	gpuGiB         float64
	load           float64
	hours          float64
	seed           uint64
	quantum        time.Duration
	factor         int32
	checkpointGBps float64
	restoreGBps    float64
	appCheckpoint  time.Duration
	migrateGBps    float64
	sizes          []float64
	// suspendFailures is the share of suspensions that fail (the agent rolls back; the job
	// stays on its GPU).
	suspendFailures float64
	spreadingDelay  time.Duration
}

// defaults fills what the flags left unset.
func (o *options) defaults() {
	if len(o.sizes) == 0 {
		o.sizes = []float64{10, 20, 40, 80}
	}
	if o.factor == 0 {
		o.factor = 10
	}
}

func main() {
	var o options
	flag.IntVar(&o.nodes, "nodes", 4, "nodes")
	flag.IntVar(&o.gpus, "gpus", 8, "GPUs per node")
	flag.Float64Var(&o.gpuGiB, "gpu-gib", 80, "VRAM per GPU, GiB")
	flag.Float64Var(&o.load, "load", 3, "VRAM of the batch jobs submitted at the start, in multiples of the cluster's VRAM")
	flag.Float64Var(&o.hours, "hours", 24, "simulated hours over which high-priority jobs arrive; batch work is sized to keep the cluster oversubscribed about as long")
	flag.Uint64Var(&o.seed, "seed", 1, "trace seed")
	flag.DurationVar(&o.quantum, "quantum", time.Minute, "timeSliceQuantum")
	flag.Func("min-quantum-factor", "timeSliceMinQuantumFactor (default 10)", func(s string) error {
		_, err := fmt.Sscan(s, &o.factor)
		return err
	})
	flag.Float64Var(&o.checkpointGBps, "checkpoint-gbps", 2.2, "suspend rate, GB/s per process (measured on H200, driver 580)")
	flag.Float64Var(&o.restoreGBps, "restore-gbps", 6, "resume rate, GB/s per process (measured on H200, driver 580)")
	flag.Float64Var(&o.migrateGBps, "migrate-gbps", 1.25, "checkpoint image transfer between nodes, GB/s (10 GbE), for the migration model")
	flag.DurationVar(&o.appCheckpoint, "app-checkpoint", 30*time.Minute, "how often jobs write their own checkpoint (what kill-preemption falls back to)")
	flag.Func("sizes", "VRAM sizes of the batch jobs, GiB, comma separated (default 10,20,40,80)", func(v string) error {
		for _, f := range strings.Split(v, ",") {
			var x float64
			if _, err := fmt.Sscan(f, &x); err != nil {
				return err
			}
			o.sizes = append(o.sizes, x)
		}
		return nil
	})
	flag.Float64Var(&o.suspendFailures, "suspend-failures", 0.02, "share of suspensions that fail and are rolled back")
	flag.DurationVar(&o.spreadingDelay, "spreading-delay", 30*time.Second, "spreadingDelay: how long a node's jobs stay where they are before one spreads onto an unused GPU")
	flag.Parse()
	o.defaults()

	trace := makeTrace(o)
	var results []result
	for _, p := range policies {
		results = append(results, run(o, trace, p))
	}
	report(os.Stdout, o, trace, results)
}

// ---------------------------------------------------------------- trace

type priority = int32

const (
	prioLow    priority = 100
	prioNormal priority = 1000
	prioHigh   priority = 10000
)

type spec struct {
	id     int
	prio   priority
	vram   float64 // bytes on its GPU
	need   float64 // seconds of exclusive GPU compute
	submit float64 // seconds
}

// makeTrace: batch jobs (normal and low priority) whose VRAM is load x the cluster's, all
// submitted at the start, plus high-priority jobs arriving over the hours (about 10% of the
// cluster's GPU time).
func makeTrace(o options) []spec {
	r := rand.New(rand.NewPCG(o.seed, 42))
	sizes := o.sizes
	capVRAM := float64(o.nodes*o.gpus) * o.gpuGiB * gib
	capGPUSeconds := float64(o.nodes*o.gpus) * o.hours * 3600
	var jobs []spec
	var vram, work float64
	for vram < o.load*capVRAM {
		s := sizes[r.IntN(len(sizes))]
		v := math.Min(s, o.gpuGiB) * gib
		prio := prioNormal
		if r.Float64() < 0.3 {
			prio = prioLow
		}
		jobs = append(jobs, spec{prio: prio, vram: v})
		vram += v
	}
	// Batch work fills about 90% of the cluster's GPU time over the hours, split by a
	// lognormal spread (median job ~e^0 x mean share), at least 10 minutes each.
	target := 0.9 * capGPUSeconds
	weights := make([]float64, len(jobs))
	var sum float64
	for i := range jobs {
		weights[i] = math.Exp(r.NormFloat64() * 0.6)
		sum += weights[i]
	}
	for i := range jobs {
		jobs[i].need = math.Max(600, math.Round(target*weights[i]/sum))
		work += jobs[i].need
	}
	// High priority: short interactive jobs, Poisson arrivals, ~10% of the GPU time.
	meanNeed := 20 * 60.0
	rate := 0.1 * capGPUSeconds / o.hours / 3600 / meanNeed // jobs per second
	for t := r.ExpFloat64() / rate; t < o.hours*3600; t += r.ExpFloat64() / rate {
		jobs = append(jobs, spec{prio: prioHigh, vram: []float64{10, 20, 40}[r.IntN(3)] * gib, need: math.Round(600 + r.Float64()*1200), submit: math.Round(t)})
	}
	for i := range jobs {
		jobs[i].id = i
	}
	return jobs
}

// ---------------------------------------------------------------- simulation

type state int

const (
	pending state = iota
	movingIn
	resident
	movingOut
	suspended
	done
)

type job struct {
	spec
	state    state
	node     int
	gpu      int // index in sim.gpus while it holds VRAM, else -1
	progress float64
	// gpuTime is the time the job has been resident on a GPU, the GPU time Kybernate's
	// controllers count (timeslice.UsageOf) and the fairness figure compares.
	gpuTime float64
	// lastCkpt is the progress of the job's last application checkpoint (kill policy).
	lastCkpt float64
	turnAt   float64 // when its current turn began
	moveEnd  float64
	// failing says the suspension under way fails at moveEnd; preemptor is the job it was for.
	failing   bool
	preemptor *job
	// lastSuspend and lastResume are the durations of its last moves, what the time-slice
	// controller measures (zero until it was moved both ways).
	lastSuspend, lastResume float64
	waitFrom                float64 // when it began to wait (suspended)
	finished                float64
	// nominated is the node a pending job waits on (kybernate), -1 if none.
	nominated int
	hourMark  float64 // gpuTime at the start of the current hour
}

type gpu struct {
	node int
	used float64
}

type sim struct {
	o options
	t float64
	// dirty says something changed this second (an arrival, a move ended, a job finished);
	// the policies only act then, and at nextTurn (the earliest end of a turn that matters).
	dirty    bool
	nextTurn float64
	jobs     []*job
	gpus     []*gpu
	args     config.ControllerConfiguration
	stats    stats
	// failures draws which suspensions fail, from the trace's seed.
	failures *rand.Rand
}

type stats struct {
	busyGPUSeconds, contendedGPUSeconds float64
	lostSeconds                         float64
	moves, failedSuspensions            int
	spreadMoves                         int
	moveGPUSeconds                      float64
	jainSum, jainWeight                 float64
	drained                             float64 // when nothing waited any more
	end                                 float64
}

type policy struct {
	name, description string
	step              func(*sim)
}

type result struct {
	policy policy
	stats  stats
	jobs   []*job
}

func run(o options, trace []spec, p policy) result {
	s := &sim{o: o, args: config.ControllerConfiguration{
		TimeSliceQuantum: metav1.Duration{Duration: o.quantum}, TimeSliceMinQuantumFactor: o.factor,
	}}
	s.args.MigrationMinWait = metav1.Duration{Duration: 30 * time.Second}
	s.args.MigrationBytesPerSecond = 1 << 30
	s.args.SpreadingDelay = metav1.Duration{Duration: o.spreadingDelay}
	s.failures = rand.New(rand.NewPCG(o.seed, 7))
	for n := range o.nodes {
		for range o.gpus {
			s.gpus = append(s.gpus, &gpu{node: n})
		}
	}
	for _, sp := range trace {
		s.jobs = append(s.jobs, &job{spec: sp, gpu: -1, node: -1, nominated: -1})
	}
	limit := 14 * 24 * 3600.0
	arrivals := map[float64]bool{}
	for _, j := range s.jobs {
		arrivals[j.submit] = true
	}
	s.nextTurn = math.Inf(1)
	for ; s.t < limit; s.t++ {
		if int(s.t)%3600 == 0 {
			s.hour()
		}
		s.dirty = s.dirty || arrivals[s.t]
		s.finishMoves()
		if s.dirty || s.t >= s.nextTurn {
			s.dirty = false
			p.step(s)
		}
		s.compute()
		if s.allDone() {
			break
		}
	}
	s.stats.end = s.t
	return result{policy: p, stats: s.stats, jobs: s.jobs}
}

func (s *sim) arrived(j *job) bool { return j.submit <= s.t }

func (s *sim) allDone() bool {
	for _, j := range s.jobs {
		if j.state != done {
			return false
		}
	}
	return true
}

// hour closes the fairness window of the hour that ended: Jain's index of the GPU time the
// jobs of each priority received in it, over the jobs that were there and unfinished all hour,
// weighted by the GPU time the class received.
func (s *sim) hour() {
	if s.t > 0 {
		byPrio := map[priority][]float64{}
		for _, j := range s.jobs {
			if j.submit <= s.t-3600 && (j.state != done || j.finished >= s.t) && j.hourMark >= 0 {
				byPrio[j.prio] = append(byPrio[j.prio], j.gpuTime-j.hourMark)
			}
		}
		for _, xs := range byPrio {
			if len(xs) < 2 || !s.contended() {
				continue
			}
			var sum, sq float64
			for _, x := range xs {
				sum += x
				sq += x * x
			}
			if sq > 0 {
				// Weighted by the GPU time the class received: a class that higher priorities
				// keep off the GPUs has little to be fair about.
				s.stats.jainSum += sum * (sum * sum / (float64(len(xs)) * sq))
				s.stats.jainWeight += sum
			}
		}
	}
	for _, j := range s.jobs {
		if j.state == done {
			j.hourMark = -1
		} else {
			j.hourMark = j.gpuTime
		}
	}
}

// contended reports whether some arrived job waits for a GPU.
func (s *sim) contended() bool {
	for _, j := range s.jobs {
		if s.arrived(j) && (j.state == pending || j.state == suspended || j.state == movingOut) {
			return true
		}
	}
	return false
}

func (s *sim) finishMoves() {
	for _, j := range s.jobs {
		switch {
		case j.state == movingOut && j.moveEnd <= s.t && j.failing:
			// Rolled back: the job computes on, its turn renewed (timeslice.Usage.TurnRenewed);
			// a preemptor looks for other victims.
			j.state, j.turnAt, j.failing = resident, s.t, false
			if j.preemptor != nil && j.preemptor.state == pending {
				j.preemptor.nominated = -1
			}
			j.preemptor = nil
			s.dirty = true
		case j.state == movingOut && j.moveEnd <= s.t:
			s.gpus[j.gpu].used -= j.vram
			j.gpu, j.state, j.waitFrom, j.preemptor = -1, suspended, s.t, nil
			s.dirty = true
		case j.state == movingIn && j.moveEnd <= s.t:
			j.state, j.turnAt = resident, s.t
			s.dirty = true
		}
	}
}

// compute advances one second: jobs resident together on a GPU share it equally.
func (s *sim) compute() {
	k := make([]int, len(s.gpus))
	moving := make([]bool, len(s.gpus))
	for _, j := range s.jobs {
		switch j.state {
		case resident:
			k[j.gpu]++
		case movingIn, movingOut:
			moving[j.gpu] = true
		}
	}
	contended := s.contended()
	for g := range s.gpus {
		if contended {
			s.stats.contendedGPUSeconds++
			if k[g] > 0 {
				s.stats.busyGPUSeconds++
			}
			if moving[g] && k[g] == 0 {
				s.stats.moveGPUSeconds++
			}
		}
	}
	if !contended && s.stats.drained == 0 && s.t > 0 {
		s.stats.drained = s.t
	}
	for _, j := range s.jobs {
		if j.state != resident {
			continue
		}
		j.progress += 1 / float64(k[j.gpu])
		j.gpuTime++
		if c := s.o.appCheckpoint.Seconds(); math.Floor(j.progress/c) > math.Floor(j.lastCkpt/c) {
			j.lastCkpt = math.Floor(j.progress/c) * c
		}
		if j.progress >= j.need {
			s.gpus[j.gpu].used -= j.vram
			j.state, j.gpu, j.finished = done, -1, s.t+1
			s.dirty = true
		}
	}
}

// bestFit is the GPU (of node, or any when node < 0) with the least free VRAM that still holds v.
func (s *sim) bestFit(v float64, node int) int {
	best, bestFree := -1, math.Inf(1)
	for i, g := range s.gpus {
		if node >= 0 && g.node != node {
			continue
		}
		if free := s.o.gpuGiB*gib - g.used; free >= v && free < bestFree {
			best, bestFree = i, free
		}
	}
	return best
}

func (s *sim) start(j *job, g int) {
	s.gpus[g].used += j.vram
	j.gpu, j.node, j.state, j.turnAt, j.nominated = g, s.gpus[g].node, resident, s.t, -1
}

// resume brings a suspended job back onto GPU g of its node.
func (s *sim) resume(j *job, g int) {
	s.gpus[g].used += j.vram
	j.gpu, j.state = g, movingIn
	j.lastResume = math.Ceil(j.vram / (s.o.restoreGBps * 1e9))
	j.moveEnd = s.t + j.lastResume
	s.stats.moves++
}

// suspend parks a job's memory in host memory, for preemptor (nil: a turn). The move takes
// its time even when it fails.
func (s *sim) suspend(j *job, preemptor *job) {
	j.state, j.preemptor = movingOut, preemptor
	d := math.Ceil(j.vram / (s.o.checkpointGBps * 1e9))
	j.moveEnd = s.t + d
	s.stats.moves++
	if s.failures.Float64() < s.o.suspendFailures {
		j.failing = true
		s.stats.failedSuspensions++
		return
	}
	j.lastSuspend = d
}

// moveCost is the job's last measured suspend plus resume, as the time-slice controller reads
// it (timeslice.Usage.MoveCost): zero until it was moved both ways.
func (s *sim) moveCost(j *job) time.Duration {
	if j.lastSuspend == 0 || j.lastResume == 0 {
		return 0
	}
	return time.Duration((j.lastSuspend + j.lastResume) * float64(time.Second))
}

// queue is the arrived pending jobs by priority, then arrival.
func (s *sim) queue() []*job {
	var q []*job
	for _, j := range s.jobs {
		if j.state == pending && s.arrived(j) {
			q = append(q, j)
		}
	}
	slices.SortStableFunc(q, func(a, b *job) int { return cmp.Or(cmp.Compare(b.prio, a.prio), cmp.Compare(a.submit, b.submit)) })
	return q
}

// ---------------------------------------------------------------- report

func report(w *os.File, o options, trace []spec, results []result) {
	count := map[priority]int{}
	var work float64
	for _, j := range trace {
		count[j.prio]++
		work += j.need
	}
	fmt.Fprintf(w, "## %d node(s) x %d GPUs (%s)\n\n", o.nodes, o.gpus, time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(w, "`go run ./test/bench/timeslice %s`. A simulation (a model, not the system): %d node(s) x %d GPUs of %.0f GiB, "+
		"batch jobs of %s GiB whose VRAM is %.1fx the cluster's submitted at the start (%d normal, %d low priority), "+
		"%d high-priority jobs (10-30 min) arriving over %.0f h; %.0f GPU-hours of work in all. Jobs resident together on a GPU share it equally. "+
		"Suspend %.1f GB/s, resume %.1f GB/s per process (measured on H200, driver 580), each move charged its time; %.0f%% of suspensions fail "+
		"(rolled back after their time, the job keeps its GPU for a renewed turn); quantum %s, floor %dx the last measured suspend+resume; "+
		"migration once a job waited 30 s and longer than its memory takes at 1 GiB/s, image transfer %.2f GB/s; "+
		"spreading once a node's jobs stayed where they are for %s; "+
		"jobs write their own checkpoint every %s (what kill-preemption restarts from).\n\n",
		strings.Join(os.Args[1:], " "), o.nodes, o.gpus, o.gpuGiB, joinSizes(o.sizes), o.load, count[prioNormal], count[prioLow], count[prioHigh], o.hours, work/3600,
		o.checkpointGBps, o.restoreGBps, 100*o.suspendFailures, o.quantum, o.factor, o.migrateGBps, o.spreadingDelay, o.appCheckpoint)
	fmt.Fprintln(w, "| policy | GPU busy while jobs wait | Jain fairness of GPU time (equal priority, hourly) | mean JCT h | p95 JCT h | high-priority mean / p95 extra time min | GPU-hours lost | moves (failed) | GPU time moving memory | all done after h |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		var jct, highWait []float64
		for _, j := range r.jobs {
			if j.state != done {
				continue
			}
			jct = append(jct, (j.finished-j.submit)/3600)
			if j.prio == prioHigh {
				// Waiting = time to completion minus the job's own compute time.
				highWait = append(highWait, math.Max(0, (j.finished-j.submit-j.need)/60))
			}
		}
		st := r.stats
		jain := math.NaN()
		if st.jainWeight > 0 {
			jain = st.jainSum / st.jainWeight
		}
		fmt.Fprintf(w, "| %s | %.1f%% | %.3f | %.2f | %.2f | %.1f / %.1f | %.1f | %d (%d) | %.2f%% | %.1f |\n",
			r.policy.description, 100*st.busyGPUSeconds/st.contendedGPUSeconds, jain, mean(jct), pct(jct, 0.95),
			mean(highWait), pct(highWait, 0.95), st.lostSeconds/3600, st.moves, st.failedSuspensions, 100*st.moveGPUSeconds/st.contendedGPUSeconds, st.end/3600)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "GPU busy: share of GPU-seconds with a job computing, counted while some job waited for a GPU. Fairness: Jain's index of the GPU time "+
		"that jobs of one priority received in each hour they were all there, averaged over hours weighted by the GPU time the priority received (1 = equal shares). "+
		"JCT: completion minus submission, all jobs. High-priority extra time: completion minus submission minus the job's own compute time (waiting, and sharing a GPU with other resident jobs). GPU-hours lost: work since the last application checkpoint of deleted jobs. "+
		"GPU time moving memory: GPU-seconds in which a GPU only moved memory (suspend or resume) and computed nothing.")
}

func joinSizes(sizes []float64) string {
	parts := make([]string, len(sizes))
	for i, x := range sizes {
		parts[i] = fmt.Sprint(x)
	}
	return strings.Join(parts, "/")
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

func pct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	c := slices.Clone(xs)
	slices.Sort(c)
	return c[min(len(c)-1, int(math.Ceil(p*float64(len(c))))-1)]
}
