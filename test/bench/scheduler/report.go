package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// report prints the Markdown results: a summary per scheduler over the repetitions, every
// repetition, and the ratios against the goals of the benchmark.
func report(w io.Writer, o options, loadBefore, loadAfter string, def, ours []result) {
	fmt.Fprintf(w, "# Scheduler throughput, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "Command: `make bench-scheduler` (go run ./test/bench/scheduler -nodes %d -pods %d -create-qps %d "+
		"-client-qps %d -client-burst %d -reps %d). %d kwok nodes x %d simulated GPUs, %d slots per GPU. Both schedulers "+
		"run at the same time on the same control plane with client QPS %d / burst %d; each repetition creates %d pods "+
		"for the default kube-scheduler (the pods without the GPU resource), then the same %d pods with `kybernate.io/gpu: 1` "+
		"for kybernate-scheduler (shipped profile and controllers). Pods stay, so later repetitions see fuller nodes, the same "+
		"for both. kube-apiserver, etcd, kwok, the agent and both schedulers on this machine: %s; load average before "+
		"%s, after %s (the machine is shared).\n\n",
		o.nodes, o.pods, o.createQPS, o.clientQPS, o.clientBurst, o.reps, o.nodes, o.gpusPerNode, o.slotsPerGPU,
		o.clientQPS, o.clientBurst, o.pods, o.pods, machine(), loadBefore, loadAfter)
	fmt.Fprintln(w, "| scheduler | pods | repetitions | pods/s min / median / max | p50 latency | p99 latency | algorithm p99 |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, runs := range [][]result{def, ours} {
		s := summarize(runs)
		fmt.Fprintf(w, "| %s | %s | %d | %.1f / %.1f / %.1f | %s | %s | %s |\n", runs[0].scheduler, runs[0].kind, len(runs),
			s.minTP, s.medianTP, s.maxTP, s.p50, s.p99, s.algorithmP99)
	}
	d, k := summarize(def), summarize(ours)
	fmt.Fprintf(w, "\nkybernate-scheduler / default: throughput (median) **%.2fx** (goal >= 0.9x), algorithm p99 **%.2fx** (goal <= 1.5x).\n\n",
		k.medianTP/d.medianTP, float64(k.algorithmP99)/float64(d.algorithmP99))
	fmt.Fprintln(w, "| repetition | scheduler | pods placed | pods/s | p50 latency | p99 latency | algorithm p99 |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for i := range def {
		for _, r := range []result{def[i], ours[i]} {
			fmt.Fprintf(w, "| %d | %s | %d | %.1f | %s | %s | %s |\n", i+1, r.scheduler, r.placed, r.throughput(),
				percentile(r.latencies, 50), percentile(r.latencies, 99), r.algorithm.quantile(0.99).Round(100*time.Microsecond))
		}
	}
	fmt.Fprintln(w, "\nLatency: from the return of the create call to the watch event that shows the pod bound, over "+
		"all repetitions. Algorithm p99: from each scheduler's scheduler_scheduling_algorithm_duration_seconds "+
		"(PreFilter to Score, without binding), the increase over the repetitions, interpolated inside its "+
		"doubling buckets as Prometheus' histogram_quantile does.")
}

type summary struct {
	minTP, medianTP, maxTP float64
	p50, p99, algorithmP99 time.Duration
}

func summarize(runs []result) summary {
	var tps []float64
	var lat []time.Duration
	var alg histogram
	for _, r := range runs {
		tps = append(tps, r.throughput())
		lat = append(lat, r.latencies...)
		alg = alg.plus(r.algorithm)
	}
	slices.Sort(tps)
	return summary{
		minTP: tps[0], medianTP: tps[len(tps)/2], maxTP: tps[len(tps)-1],
		p50: percentile(lat, 50), p99: percentile(lat, 99),
		algorithmP99: alg.quantile(0.99).Round(100 * time.Microsecond),
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
