package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// report writes the Markdown results: a summary per contender over the repetitions, the ratios
// against the default scheduler and the baseline, and every repetition.
func report(w io.Writer, o options, loadBefore, loadAfter string, cs []*contender, runs [][]result) {
	fmt.Fprintf(w, "# Scheduler throughput, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "Command: `go run ./test/bench/scheduler %s` (`make bench-scheduler`). %d kwok nodes x %d simulated GPUs "+
		"(the node agent in --simulate mode, its simulated pods' progress annotations off), %d slots per GPU. Every scheduler, and the extender, runs with client QPS %d / "+
		"burst %d. Each repetition measures every contender once, in a rotating order, on an empty cluster: its "+
		"processes are started and ready (informers synced), %d pods are created at %d/s, and once all are bound the "+
		"processes stop and the pods are deleted. The default kube-scheduler gets the pods without the GPU resource; "+
		"the others the same pods with `kybernate.io/gpu: 1` and `kybernate.io/gpu-memory: 20Gi`. kybernate-scheduler "+
		"runs the shipped profile and controllers (manifests/scheduler), kybernate-extender the shipped controllers "+
		"behind a stock kube-scheduler configured as docs/extender.md says.\n\n",
		strings.Join(os.Args[1:], " "), o.nodes, o.gpusPerNode, o.slotsPerGPU, o.clientQPS, o.clientBurst, o.pods, o.createQPS)
	fmt.Fprintf(w, "Machine: %s, shared with other work: load average (1/5/15 min) %s before, %s after. "+
		"kube-apiserver, etcd, kwok, the agent and the scheduler under test all run on it.\n\n", machine(), loadBefore, loadAfter)
	fmt.Fprintln(w, "| contender | pods | repetitions | pods/s min / median / max | p50 latency | p99 latency | algorithm p99 | attempt p99 |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	sums := make([]summary, len(cs))
	for i, c := range cs {
		sums[i] = summarize(runs[i])
		s := sums[i]
		fmt.Fprintf(w, "| %s | %s | %d | %.1f / %.1f / %.1f | %s | %s | %s | %s |\n", c.label, podKind(c.gpu), len(runs[i]),
			s.minTP, s.medianTP, s.maxTP, s.p50, s.p99, s.algorithmP99, s.attemptP99)
	}
	fmt.Fprintln(w)
	for i, c := range cs[1:] {
		fmt.Fprintf(w, "- %s / default: throughput (median) **%.2fx**, algorithm p99 **%.2fx**, attempt p99 %.2fx.\n",
			c.label, sums[i+1].medianTP/sums[0].medianTP, ratio(sums[i+1].algorithmP99, sums[0].algorithmP99), ratio(sums[i+1].attemptP99, sums[0].attemptP99))
	}
	for i, c := range cs {
		if c.key == "baseline" {
			fmt.Fprintf(w, "- this tree / %s: throughput (median) **%.2fx**, algorithm p99 **%.2fx**, p99 latency %.2fx.\n",
				c.label, sums[1].medianTP/sums[i].medianTP, ratio(sums[1].algorithmP99, sums[i].algorithmP99), ratio(sums[1].p99, sums[i].p99))
		}
	}
	fmt.Fprintln(w, "\n| repetition | order | contender | pods placed | pods/s | p50 latency | p99 latency | algorithm p99 | attempt p99 |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for rep := range o.reps {
		for k := range cs {
			i := (k + rep) % len(cs)
			r := runs[i][rep]
			fmt.Fprintf(w, "| %d | %d | %s | %d | %.1f | %s | %s | %s | %s |\n", rep+1, k+1, cs[i].label, r.placed, r.throughput(),
				percentile(r.latencies, 50), percentile(r.latencies, 99), r.algorithm.quantile(0.99).Round(100*time.Microsecond),
				r.attempt.quantile(0.99).Round(100*time.Microsecond))
		}
	}
	cpuReport(w, cs, runs)
	censusReport(w, cs, runs)
	fmt.Fprintln(w, "\nLatency: from the return of the create call to the watch event that shows the pod bound, over "+
		"all repetitions. Algorithm p99: from the kube-scheduler's scheduler_scheduling_algorithm_duration_seconds "+
		"(PreFilter to Score, the extender's filter and prioritize calls included, without binding); attempt p99: "+
		"scheduler_scheduling_attempt_duration_seconds of the scheduled pods (algorithm and binding cycle, the "+
		"extender's bind included); both the increase over the repetitions, interpolated inside their doubling "+
		"buckets as Prometheus' histogram_quantile does, so within a factor of two of the truth.")
}

func podKind(gpu bool) string {
	if gpu {
		return "1 GPU, 20Gi"
	}
	return "no GPU, 20Gi annotation"
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

type summary struct {
	minTP, medianTP, maxTP float64
	p50, p99, algorithmP99 time.Duration
	attemptP99             time.Duration
}

func summarize(runs []result) summary {
	var tps []float64
	var lat []time.Duration
	var alg, att histogram
	for _, r := range runs {
		tps = append(tps, r.throughput())
		lat = append(lat, r.latencies...)
		alg, att = alg.plus(r.algorithm), att.plus(r.attempt)
	}
	slices.Sort(tps)
	return summary{
		minTP: tps[0], medianTP: tps[len(tps)/2], maxTP: tps[len(tps)-1],
		p50: percentile(lat, 50), p99: percentile(lat, 99),
		algorithmP99: alg.quantile(0.99).Round(100 * time.Microsecond),
		attemptP99:   att.quantile(0.99).Round(100 * time.Microsecond),
	}
}

// plus adds the observations of two histograms with the same buckets.
func (h histogram) plus(o histogram) histogram {
	if len(h.counts) == 0 {
		return histogram{bounds: o.bounds, counts: slices.Clone(o.counts)}
	}
	s := histogram{bounds: h.bounds, counts: slices.Clone(h.counts)}
	for i := range s.counts {
		if i < len(o.counts) {
			s.counts[i] += o.counts[i]
		}
	}
	return s
}

func (r result) throughput() float64 { return float64(r.placed) / r.window.Seconds() }

func percentile(latencies []time.Duration, p int) time.Duration {
	if len(latencies) == 0 {
		return 0
	}
	s := slices.Clone(latencies)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)].Round(time.Millisecond)
}

func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(data))[:3], " ")
}

func machine() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	model := ""
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "model name") {
			model = strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
			break
		}
	}
	n := strings.Count(string(data), "processor\t:")
	return fmt.Sprintf("%d x %s", n, model)
}
