package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
)

// benchBallastEnv sets the memory the benchmark's container holds, in MiB.
const benchBallastEnv = "KYBERNATE_BENCH_BALLAST_MIB"

// BenchmarkResumePerTier: how long a container holding KYBERNATE_BENCH_BALLAST_MIB (default
// 8192) MiB of random bytes in its memory takes to come back from each storage tier, on real
// containerd, runc and CRIU with the shim, the agent's disk tier and a real SeaweedFS; the
// baseline, in the same run, is a cold start of the same container (its memory filled again).
// Per iteration: cold start; spill to disk (CRIU dump, hash, encrypt, fsync; the container
// stops); created again, restored from disk (verify, decrypt, CRIU restore) and counting on;
// spilled again, to the object store (disk, then upload; disk copy deleted); created again,
// restored from the object store (stream, verify, decrypt, CRIU restore). Every restore must be
// the same process (its token) going on at N+1. A CPU container: a GPU pod's parked memory
// takes the same path inside its processes' memory, plus the driver's restore onto the GPU,
// which the GPU suites measure. `make bench-tiers` runs it and writes the results file.
func BenchmarkResumePerTier(b *testing.B) {
	mib := 8192
	if s := os.Getenv(benchBallastEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			b.Fatalf("%s=%q: want a positive number of MiB", benchBallastEnv, s)
		}
		mib = n
	}
	e := newTierEnv(b)
	var sum tierTimes
	for i := range b.N {
		sum = sum.add(resumePerTier(b, e, fmt.Sprintf("bench%d", i), mib))
	}
	n := float64(b.N)
	b.ReportMetric(float64(mib), "ballast-MiB")
	for _, m := range []struct {
		unit string
		d    time.Duration
	}{
		{"cold-start-s", sum.cold}, {"spill-disk-s", sum.spillDisk}, {"resume-disk-s", sum.resumeDisk},
		{"spill-objectstore-s", sum.spillObjects}, {"resume-objectstore-s", sum.resumeObjects},
	} {
		b.ReportMetric(m.d.Seconds()/n, m.unit)
	}
	b.ReportMetric(0, "ns/op") // the figures above are the result, not the loop's time
}

// tierTimes are the durations of one round of BenchmarkResumePerTier.
type tierTimes struct {
	cold, spillDisk, resumeDisk, spillObjects, resumeObjects time.Duration
}

func (a tierTimes) add(b tierTimes) tierTimes {
	return tierTimes{a.cold + b.cold, a.spillDisk + b.spillDisk, a.resumeDisk + b.resumeDisk,
		a.spillObjects + b.spillObjects, a.resumeObjects + b.resumeObjects}
}

// resumePerTier is one round: pod's container started cold, spilled to disk and restored,
// spilled to the object store and restored.
func resumePerTier(b *testing.B, e *tierEnv, pod string, mib int) tierTimes {
	ctx, cancel := context.WithTimeout(e.ctx, 60*time.Minute)
	defer cancel()
	opts := ctrOpts{labels: podLabels(pod, "counter"), annotations: kybernatePod(pod, "counter"),
		env: []string{"COUNTER_BALLAST_MIB=" + strconv.Itoa(mib), "COUNTER_INTERVAL=0.05", "COUNTER_TOKEN=1"}}
	var t tierTimes
	start := time.Now()
	c := e.mustRun(pod+"-0", opts)
	ready := fmt.Sprintf("ballast %d", mib)
	eventually(b, 10*time.Minute, "the ballast to fill", func() bool { return strings.Contains(c.stderr.String(), ready) && c.count(b) > 0 })
	t.cold = time.Since(start)
	token := c.token(b)
	b.Logf("cold start with %d MiB: %s", mib, t.cold.Round(time.Millisecond))

	for i, tier := range []string{"Disk", "ObjectStore"} {
		start = time.Now()
		resp, err := e.agent.Spill(ctx, &agentv1.SpillRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: pod, Container: "counter"}, Tier: tier})
		if err != nil {
			b.Fatalf("spill to %s: %v", tier, err)
		}
		c.waitExit(b)
		spilled := time.Since(start)
		last := c.count(b)
		b.Logf("spilled to %s in %s: %s, %d bytes (%d stored)", tier, spilled.Round(time.Millisecond), resp.GetLocation(), resp.GetSizeBytes(), resp.GetStoredBytes())

		start = time.Now()
		c = e.mustRun(fmt.Sprintf("%s-%d", pod, i+1), opts)
		eventually(b, 10*time.Minute, "the restored counter to go on", func() bool { return c.count(b) > last })
		resumed := time.Since(start)
		if first, err := strconv.Atoi(c.stdout.lines()[0]); err != nil || first != last+1 {
			b.Fatalf("restored from %s, the counter began at %q, want %d: not the same process", tier, c.stdout.lines()[0], last+1)
		}
		if got := c.token(b); got != token {
			b.Fatalf("restored from %s with token %s, want %s: the process started afresh", tier, got, token)
		}
		b.Logf("resumed from %s in %s, counting on at %d", tier, resumed.Round(time.Millisecond), last+1)
		if tier == "Disk" {
			t.spillDisk, t.resumeDisk = spilled, resumed
		} else {
			t.spillObjects, t.resumeObjects = spilled, resumed
		}
	}
	if err := c.task.Kill(ctx, 9); err != nil {
		b.Fatal(err)
	}
	c.waitExit(b)
	return t
}
