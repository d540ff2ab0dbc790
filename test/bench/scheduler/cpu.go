package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// components are the processes whose CPU time a repetition charges to its contender, besides
// the contender's own ("scheduler"): the cluster's, from cluster-up.sh's pid files, and the
// simulated agent.
var clusterComponents = []string{"kube-apiserver", "etcd", "kwok", "kube-controller-manager"}

// cpuTimes is the CPU time (user + system) each component has used since it started.
type cpuTimes map[string]time.Duration

// sampleCPU reads the CPU time of the cluster's processes, the agent and the contender's.
func sampleCPU(o options, contender []int) cpuTimes {
	t := cpuTimes{}
	for _, name := range clusterComponents {
		data, err := os.ReadFile(filepath.Join(o.clusterDir, "run", name+".pid"))
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
			t.add(name, pid)
		}
	}
	if o.agentPID != 0 {
		t.add("agent", o.agentPID)
	}
	for _, pid := range contender {
		t.add("scheduler", pid)
	}
	return t
}

func (t cpuTimes) add(name string, pid int) {
	if d, err := processCPU(pid); err == nil {
		t[name] += d
	}
}

// processCPU is utime + stime of a process from /proc/<pid>/stat.
func processCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStat(pid, data)
}

// parseStat reads utime + stime from the contents of /proc/<pid>/stat.
func parseStat(pid int, data []byte) (time.Duration, error) {
	// The command name (field 2) may hold spaces: count fields after its closing parenthesis.
	end := strings.LastIndexByte(string(data), ')')
	if end < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(data[end+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q, stime %q", pid, f[11], f[12])
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// since is the CPU time each component used between two samples.
func (t cpuTimes) since(before cpuTimes) cpuTimes {
	d := cpuTimes{}
	for name, v := range t {
		d[name] = v - before[name]
	}
	return d
}

// cpuReport writes the CPU seconds per 1000 pods placed of each component, the median over the
// repetitions, per contender: where a contender's extra time goes on a machine all share.
func cpuReport(w io.Writer, cs []*contender, runs [][]result) {
	names := append([]string{"scheduler"}, clusterComponents...)
	names = append(names, "agent")
	fmt.Fprintln(w, "\nCPU seconds per 1000 pods placed (median over the repetitions), from /proc/<pid>/stat "+
		"between the start of the creations and the last pod bound; scheduler: the contender's processes "+
		"(the extender's included).")
	fmt.Fprintln(w)
	fmt.Fprintf(w, "| contender | %s | all |\n|---|%s---|\n", strings.Join(names, " | "), strings.Repeat("---|", len(names)))
	for i, c := range cs {
		fmt.Fprintf(w, "| %s |", c.label)
		var all []float64
		for _, name := range names {
			var per []float64
			for _, r := range runs[i] {
				per = append(per, r.cpu[name].Seconds()*1000/float64(max(1, r.placed)))
			}
			fmt.Fprintf(w, " %.2f |", median(per))
		}
		for _, r := range runs[i] {
			var sum time.Duration
			for _, v := range r.cpu {
				sum += v
			}
			all = append(all, sum.Seconds()*1000/float64(max(1, r.placed)))
		}
		fmt.Fprintf(w, " %.2f |\n", median(all))
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
