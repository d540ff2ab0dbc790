package probe

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"time"

	"github.com/kybernate/kybernate/cuda"
)

const (
	gib      = 1 << 30
	mib      = 1 << 20
	pageSize = 4096
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// buffer is GPU memory filled with a deterministic pattern in blocks, each
// with the CRC-32C it was written with.
type buffer struct {
	lib    cuda.Interface
	ctx    cuda.Context
	block  uint64
	seed   uint64
	allocs []cuda.DevicePtr
	blocks []cuda.DevicePtr
	crcs   []uint32
	// staging is the host side of copies, pinned when the driver allows.
	staging []byte
	pinned  bool
	base    []byte
}

// newBuffer allocates size bytes (a multiple of block, itself a multiple of
// the page size) on ctx's GPU in allocations of at most 1 GiB.
func newBuffer(lib cuda.Interface, ctx cuda.Context, size, block, seed uint64) (*buffer, error) {
	if block == 0 || block%pageSize != 0 || size == 0 || size%block != 0 {
		return nil, fmt.Errorf("buffer of %d bytes in blocks of %d: want a positive multiple of a positive multiple of %d", size, block, pageSize)
	}
	b := &buffer{lib: lib, ctx: ctx, block: block, seed: seed}
	perAlloc := max(block, gib/block*block)
	for off := uint64(0); off < size; off += perAlloc {
		n := min(perAlloc, size-off)
		p, err := lib.MemAlloc(ctx, n)
		if err != nil {
			b.free()
			return nil, fmt.Errorf("allocate %d bytes of gpu memory (%d of %d done): %w", n, off, size, err)
		}
		b.allocs = append(b.allocs, p)
		for o := uint64(0); o < n; o += block {
			b.blocks = append(b.blocks, p+cuda.DevicePtr(o))
		}
	}
	if h, err := lib.MemHostAlloc(ctx, block); err == nil {
		b.staging, b.pinned = h, true
	} else {
		b.staging = make([]byte, block)
	}
	b.base = make([]byte, block)
	x := seed
	for i := 0; i+8 <= len(b.base); i += 8 {
		// splitmix64
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		binary.LittleEndian.PutUint64(b.base[i:], z^(z>>31))
	}
	return b, nil
}

func (b *buffer) size() uint64 { return uint64(len(b.blocks)) * b.block }

// pattern writes block k's content into dst: the random base with a word
// naming block and page at the start of every page, so that misplaced pages
// change the checksum.
func (b *buffer) pattern(dst []byte, k int) {
	copy(dst, b.base)
	for off := 0; off < len(dst); off += pageSize {
		binary.LittleEndian.PutUint64(dst[off:], (uint64(k)<<32|uint64(off/pageSize))^b.seed)
	}
}

// fill writes every block and records its checksum.
func (b *buffer) fill() error {
	b.crcs = make([]uint32, len(b.blocks))
	for k, p := range b.blocks {
		b.pattern(b.staging, k)
		b.crcs[k] = crc32.Checksum(b.staging, castagnoli)
		if err := b.lib.MemcpyHtoD(b.ctx, p, b.staging); err != nil {
			return fmt.Errorf("fill block %d: %w", k, err)
		}
	}
	return nil
}

// verify reads every block back and returns how many differ from what fill
// wrote.
func (b *buffer) verify() (bad int, err error) {
	for k, p := range b.blocks {
		if err := b.lib.MemcpyDtoH(b.ctx, b.staging, p); err != nil {
			return bad, fmt.Errorf("read block %d: %w", k, err)
		}
		if crc32.Checksum(b.staging, castagnoli) != b.crcs[k] {
			bad++
		}
	}
	return bad, nil
}

// checksum combines the block checksums into one figure for reports.
func (b *buffer) checksum() string {
	buf := make([]byte, 4*len(b.crcs))
	for i, c := range b.crcs {
		binary.LittleEndian.PutUint32(buf[4*i:], c)
	}
	return fmt.Sprintf("%08x", crc32.Checksum(buf, castagnoli))
}

func (b *buffer) free() {
	for _, p := range b.allocs {
		b.lib.MemFree(b.ctx, p)
	}
	b.allocs, b.blocks = nil, nil
	if b.pinned {
		b.lib.MemFreeHost(b.ctx, b.staging)
		b.pinned = false
	}
	b.staging = nil
}

// holdConfig is what hold does.
type holdConfig struct {
	GPU      string
	Bytes    uint64
	Block    uint64
	Seed     uint64
	Interval time.Duration
}

func runHold(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("hold")
	var cfg holdConfig
	fs.StringVar(&cfg.GPU, "gpu", "0", "GPU index or GPU-... uuid")
	gibs := fs.Float64("gib", 1, "GiB of GPU memory to hold")
	blockMiB := fs.Uint64("block-mib", 64, "checksum block size in MiB")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "pattern seed")
	fs.DurationVar(&cfg.Interval, "interval", 10*time.Second, "verify this often; 0: only on SIGUSR1 and at exit")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if *gibs <= 0 || *blockMiB == 0 || *gibs*gib > math.MaxInt64 {
		return fmt.Errorf("%w: --gib and --block-mib must be positive", errUsage)
	}
	cfg.Block = *blockMiB * mib
	cfg.Bytes = (uint64(*gibs*gib) + cfg.Block - 1) / cfg.Block * cfg.Block
	if err := c.open(); err != nil {
		return err
	}
	return c.hold(ctx, cfg)
}

// hold fills GPU memory, prints a READY record and verifies the memory every
// interval, when env.Verify fires, and when ctx ends, which ends it.
func (c *cli) hold(ctx context.Context, cfg holdConfig) error {
	g, err := c.resolveGPU(cfg.GPU)
	if err != nil {
		return err
	}
	cctx, err := c.lib.PrimaryCtxRetain(g.dev)
	if err != nil {
		return fmt.Errorf("retain context of gpu %s: %w", g.uuid, err)
	}
	defer c.lib.PrimaryCtxRelease(g.dev)

	start := time.Now()
	buf, err := newBuffer(c.lib, cctx, cfg.Bytes, cfg.Block, cfg.Seed)
	if err != nil {
		return err
	}
	defer buf.free()
	allocTime := time.Since(start)
	start = time.Now()
	if err := buf.fill(); err != nil {
		return err
	}
	fillTime := time.Since(start)
	c.out.emit("event", "READY", "pid", os.Getpid(), "gpu", g.uuid, "bytes", buf.size(), "blocks", len(buf.blocks),
		"pinned_staging", buf.pinned, "alloc_ms", allocTime, "fill_ms", fillTime, "fill_gbps", gbps(buf.size(), fillTime),
		"checksum", buf.checksum())

	var tick <-chan time.Time
	if cfg.Interval > 0 {
		t := time.NewTicker(cfg.Interval)
		defer t.Stop()
		tick = t.C
	}
	round := 0
	verify := func(reason string) error {
		round++
		start := time.Now()
		bad, err := buf.verify()
		d := time.Since(start)
		kv := []any{"event", "verify", "pid", os.Getpid(), "round", round, "reason", reason,
			"ok", err == nil && bad == 0, "bad_blocks", bad, "blocks", len(buf.blocks), "ms", d,
			"gbps", gbps(buf.size(), d), "checksum", buf.checksum()}
		if err != nil {
			kv = append(kv, errorFields(err)...)
		}
		c.out.emit(kv...)
		if err != nil {
			return err
		}
		if bad > 0 {
			return fmt.Errorf("%d of %d blocks differ from what was written", bad, len(buf.blocks))
		}
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			err := verify("exit")
			c.out.emit("event", "exit", "pid", os.Getpid(), "ok", err == nil)
			return err
		case <-tick:
			if err := verify("interval"); err != nil {
				return err
			}
		case <-c.env.Verify:
			if err := verify("signal"); err != nil {
				return err
			}
		}
	}
}
