package controller

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/engine"
)

// maxFootprints is the most entries GPUCheckpoint status.footprint holds.
const maxFootprints = 64

// FootprintStatus is the status.footprint of a Suspend that parked procs: one entry per process
// and GPU, in PID and then GPU order. Beyond the field's bound the largest entries are kept: a
// restore guard that misses a small one errs by little.
func FootprintStatus(procs []engine.Process) []kv1.ProcessFootprint {
	var out []kv1.ProcessFootprint
	for _, pr := range procs {
		fp := pr.Footprint
		if len(fp) == 0 {
			fp = map[cuda.UUID]int64{pr.GPU: pr.Bytes}
		}
		for g, b := range fp {
			out = append(out, kv1.ProcessFootprint{PID: int32(pr.PID), GPU: g.String(), Bytes: b})
		}
	}
	if len(out) > maxFootprints {
		slices.SortFunc(out, func(a, b kv1.ProcessFootprint) int { return cmp.Compare(b.Bytes, a.Bytes) })
		out = out[:maxFootprints]
	}
	slices.SortFunc(out, func(a, b kv1.ProcessFootprint) int {
		if a.PID != b.PID {
			return cmp.Compare(a.PID, b.PID)
		}
		return strings.Compare(a.GPU, b.GPU)
	})
	return out
}

// RecordedProcesses reads status.footprint back into the processes it was written from: each
// on the GPU where it had the most memory, with its footprint per GPU. Entries that do not parse
// are an error: the status is input the agent did not necessarily write.
func RecordedProcesses(fps []kv1.ProcessFootprint) ([]engine.Process, error) {
	var out []engine.Process
	index := map[int]int{}
	for _, f := range fps {
		if f.PID <= 0 || f.Bytes < 0 {
			return nil, fmt.Errorf("footprint entry pid %d, %d bytes: want a positive pid and bytes >= 0", f.PID, f.Bytes)
		}
		g, err := cuda.ParseUUID(f.GPU)
		if err != nil {
			return nil, fmt.Errorf("footprint of pid %d: %w", f.PID, err)
		}
		i, ok := index[int(f.PID)]
		if !ok {
			i = len(out)
			index[int(f.PID)] = i
			out = append(out, engine.Process{PID: int(f.PID), GPU: g, Footprint: map[cuda.UUID]int64{}})
		}
		p := &out[i]
		p.Footprint[g] += f.Bytes
		p.Bytes += f.Bytes
		if p.Footprint[g] > p.Footprint[p.GPU] {
			p.GPU = g
		}
	}
	return out, nil
}
