package probe

import (
	"context"
	"fmt"
	"math"
	"time"
)

func runMemcpyBench(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("memcpy-bench")
	gpuFlag := fs.String("gpu", "0", "GPU index or GPU-... uuid")
	gibs := fs.Float64("gib", 4, "GiB per copy")
	iters := fs.Int("iters", 3, "copies per kind and direction")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if *gibs <= 0 || *gibs*gib > math.MaxInt64 || *iters <= 0 {
		return fmt.Errorf("%w: --gib and --iters must be positive", errUsage)
	}
	size := (uint64(*gibs*gib) + pageSize - 1) / pageSize * pageSize
	if err := c.open(); err != nil {
		return err
	}
	g, err := c.resolveGPU(*gpuFlag)
	if err != nil {
		return err
	}
	cctx, err := c.lib.PrimaryCtxRetain(g.dev)
	if err != nil {
		return fmt.Errorf("retain context of gpu %s: %w", g.uuid, err)
	}
	defer c.lib.PrimaryCtxRelease(g.dev)

	dev, err := c.lib.MemAlloc(cctx, size)
	if err != nil {
		return fmt.Errorf("allocate %d bytes of gpu memory: %w", size, err)
	}
	defer c.lib.MemFree(cctx, dev)

	// Host buffers, with what it costs to get them: pinning and first
	// touch are part of what a checkpoint pays for its host copy.
	start := time.Now()
	pinned, err := c.lib.MemHostAlloc(cctx, size)
	if err != nil {
		return fmt.Errorf("allocate %d bytes of pinned host memory: %w", size, err)
	}
	defer c.lib.MemFreeHost(cctx, pinned)
	c.out.emit("event", "host_alloc", "kind", "pinned", "bytes", size, "ms", time.Since(start),
		"gbps", gbps(size, time.Since(start)))
	start = time.Now()
	pageable := make([]byte, size)
	for i := 0; i < len(pageable); i += pageSize {
		pageable[i] = byte(i>>12) | 1
	}
	c.out.emit("event", "host_alloc", "kind", "pageable", "bytes", size, "ms", time.Since(start),
		"gbps", gbps(size, time.Since(start)))
	for i := 0; i < len(pinned); i += pageSize {
		pinned[i] = byte(i>>12) | 1
	}

	type run struct {
		kind, dir string
		copy      func() error
	}
	runs := []run{
		{"pinned", "htod", func() error { return c.lib.MemcpyHtoD(cctx, dev, pinned) }},
		{"pinned", "dtoh", func() error { return c.lib.MemcpyDtoH(cctx, pinned, dev) }},
		{"pageable", "htod", func() error { return c.lib.MemcpyHtoD(cctx, dev, pageable) }},
		{"pageable", "dtoh", func() error { return c.lib.MemcpyDtoH(cctx, pageable, dev) }},
	}
	for _, r := range runs {
		var best, sum time.Duration
		for i := range *iters {
			if err := ctx.Err(); err != nil {
				return err
			}
			start := time.Now()
			if err := r.copy(); err != nil {
				return fmt.Errorf("%s %s copy: %w", r.kind, r.dir, err)
			}
			// A pageable HtoD may return before its last DMA lands.
			if err := c.lib.CtxSynchronize(cctx); err != nil {
				return fmt.Errorf("synchronize: %w", err)
			}
			d := time.Since(start)
			sum += d
			if i == 0 || d < best {
				best = d
			}
		}
		mean := sum / time.Duration(*iters)
		c.out.emit("event", "memcpy", "gpu", g.uuid, "kind", r.kind, "dir", r.dir, "bytes", size, "iters", *iters,
			"best_ms", best, "mean_ms", mean, "best_gbps", gbps(size, best), "mean_gbps", gbps(size, mean))
	}
	return nil
}
