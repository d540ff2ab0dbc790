// Command storage measures the node agent's image store (nodeagent/storage) on this machine
// against the plain operation on the same target in the same run: a spill to disk (SHA-256,
// AES-256-GCM, fsync) against a plain copy to the same disk; a move to object storage against
// a plain upload of the same bytes to the same server (SeaweedFS started by the hack/
// scripts); and the way back (fetch, verify, decrypt) against a plain download and copy.
// Figures are printed as a Markdown report.
//
// The image files are read from the page cache (they were just written); the disk and the
// server are this machine's, so the figures compare the store with the plain operation, not
// machines with each other.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/kybernate/kybernate/nodeagent/storage"
	"github.com/kybernate/kybernate/test/objectstore"
)

type options struct {
	sizeMiB  int
	files    int
	partMiB  int
	rounds   int
	workDir  string
	keepTemp bool
}

func main() {
	var o options
	flag.IntVar(&o.sizeMiB, "size-mib", 512, "image size in MiB")
	flag.IntVar(&o.files, "files", 4, "files the image is split into")
	flag.IntVar(&o.partMiB, "part-mib", 16, "multipart part size in MiB")
	flag.IntVar(&o.rounds, "rounds", 3, "runs of each measurement; the best is reported")
	flag.StringVar(&o.workDir, "dir", os.TempDir(), "folder on the disk to measure")
	flag.Parse()
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// result is one measured operation.
type result struct {
	name     string
	baseline string // the row this one is compared with; empty for a baseline
	bytes    int64
	best     time.Duration
	cpu      time.Duration // of this process (not the server), in the best run
}

func run(ctx context.Context, o options) error {
	root, err := objectstore.RepoRoot()
	if err != nil {
		return err
	}
	if err := objectstore.Build(ctx, root); err != nil {
		return err
	}
	work, err := os.MkdirTemp(o.workDir, "kybernate-bench-storage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	server, err := objectstore.Start(ctx, root, filepath.Join(work, "seaweedfs"))
	if err != nil {
		return err
	}
	defer server.Stop()

	load := loadAvg()
	b, err := newBench(ctx, o, work, server)
	if err != nil {
		return err
	}
	results, err := b.measure(ctx)
	if err != nil {
		return err
	}
	report(o, results, load)
	return nil
}

type bench struct {
	o      options
	work   string
	src    string
	size   int64
	key    storage.Key
	disk   *storage.Disk
	s3     *storage.S3
	raw    *minio.Client
	bucket string
	n      int // names each round's objects apart
}

func newBench(ctx context.Context, o options, work string, server *objectstore.Server) (*bench, error) {
	b := &bench{o: o, work: work, src: filepath.Join(work, "image")}
	var err error
	if b.size, err = writeImage(b.src, o.sizeMiB, o.files); err != nil {
		return nil, err
	}
	kb := make([]byte, storage.KeySize)
	rand.Read(kb)
	if b.key, err = storage.ParseKey(kb); err != nil {
		return nil, err
	}
	if b.disk, err = storage.NewDisk(filepath.Join(work, "tier")); err != nil {
		return nil, err
	}
	cfg := server.Config
	cfg.PartSize = uint64(o.partMiB) << 20
	if b.s3, err = storage.NewS3(cfg); err != nil {
		return nil, err
	}
	if err := b.s3.EnsureBucket(ctx); err != nil {
		return nil, err
	}
	b.bucket = cfg.Bucket
	b.raw, err = minio.New(cfg.Endpoint, &minio.Options{
		Creds: credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, ""), Region: cfg.Region,
		BucketLookup: minio.BucketLookupPath,
	})
	return b, err
}

// writeImage writes size MiB of random bytes in files files (random: neither the store nor
// the server can compress or deduplicate them).
func writeImage(dir string, sizeMiB, files int) (int64, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	buf := make([]byte, 1<<20)
	for i := range files {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("pages-%d.img", i+1)))
		if err != nil {
			return 0, err
		}
		for range sizeMiB / files {
			rand.Read(buf)
			if _, err := f.Write(buf); err != nil {
				f.Close()
				return 0, err
			}
		}
		if err := f.Close(); err != nil {
			return 0, err
		}
	}
	return int64(sizeMiB/files*files) << 20, nil
}

func (b *bench) measure(ctx context.Context) ([]result, error) {
	steps := []struct {
		name, baseline string
		f              func(ctx context.Context, id storage.ImageID) error
	}{
		{name: "plain copy to the disk (+fsync)", f: b.plainCopy},
		{name: "spill to the disk tier: SHA-256 + AES-256-GCM + fsync (storage.Put)", baseline: "plain copy to the disk (+fsync)", f: b.spill},
		{name: "plain upload of the files to the server", f: b.plainUpload},
		{name: "move disk tier -> object store (storage.Copy, verified)", baseline: "plain upload of the files to the server", f: b.toS3},
		{name: "plain download of the files to the disk (+fsync)", f: b.plainDownload},
		{name: "fetch object store -> disk tier (storage.Copy, verified)", baseline: "plain download of the files to the disk (+fsync)", f: b.fromS3},
		{name: "restore from the disk tier: verify + decrypt (storage.Restore)", baseline: "plain copy to the disk (+fsync)", f: b.restoreDisk},
		{name: "restore from the object store: stream, verify, decrypt (storage.Restore)", baseline: "plain download of the files to the disk (+fsync)", f: b.restoreS3},
	}
	var out []result
	for _, s := range steps {
		r := result{name: s.name, baseline: s.baseline, bytes: b.size}
		for round := range b.o.rounds {
			id := storage.ImageID{Namespace: "bench", Name: fmt.Sprintf("img-%d", round)}
			runtime.GC()
			start, cpu0 := time.Now(), cpuTime()
			if err := s.f(ctx, id); err != nil {
				return nil, fmt.Errorf("%s: %w", s.name, err)
			}
			if d := time.Since(start); r.best == 0 || d < r.best {
				r.best, r.cpu = d, cpuTime()-cpu0
			}
		}
		fmt.Fprintf(os.Stderr, "%-80s %8.1f MB/s\n", s.name, mbps(r))
		out = append(out, r)
	}
	return out, nil
}

func (b *bench) files() ([]string, error) {
	entries, err := os.ReadDir(b.src)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}

func (b *bench) plainCopy(_ context.Context, id storage.ImageID) error {
	dst := filepath.Join(b.work, "plain", id.Name)
	defer os.RemoveAll(dst)
	names, err := b.files()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	for _, n := range names {
		in, err := os.Open(filepath.Join(b.src, n))
		if err != nil {
			return err
		}
		err = writeSynced(filepath.Join(dst, n), in)
		in.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func writeSynced(path string, r io.Reader) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (b *bench) spill(ctx context.Context, id storage.ImageID) error {
	_, err := storage.Put(ctx, b.disk, id, b.key, b.src)
	return err
}

func (b *bench) plainUpload(ctx context.Context, id storage.ImageID) error {
	names, err := b.files()
	if err != nil {
		return err
	}
	for _, n := range names {
		f, err := os.Open(filepath.Join(b.src, n))
		if err != nil {
			return err
		}
		st, _ := f.Stat()
		// Same part size and the same sequential streaming path as the tier (a plain reader).
		_, err = b.raw.PutObject(ctx, b.bucket, "plain/"+id.Name+"/"+n, struct{ io.Reader }{f}, st.Size(),
			minio.PutObjectOptions{PartSize: uint64(b.o.partMiB) << 20, ContentType: "application/octet-stream"})
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) toS3(ctx context.Context, id storage.ImageID) error {
	_, err := storage.Copy(ctx, b.disk, b.s3, id)
	return err
}

func (b *bench) plainDownload(ctx context.Context, id storage.ImageID) error {
	dst := filepath.Join(b.work, "download", id.Name)
	defer os.RemoveAll(dst)
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	names, err := b.files()
	if err != nil {
		return err
	}
	for _, n := range names {
		obj, err := b.raw.GetObject(ctx, b.bucket, "plain/"+id.Name+"/"+n, minio.GetObjectOptions{})
		if err != nil {
			return err
		}
		err = writeSynced(filepath.Join(dst, n), obj)
		obj.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) fromS3(ctx context.Context, id storage.ImageID) error {
	back, err := storage.NewDisk(filepath.Join(b.work, "back", id.Name))
	if err != nil {
		return err
	}
	defer os.RemoveAll(back.Root)
	_, err = storage.Copy(ctx, b.s3, back, id)
	return err
}

func (b *bench) restoreDisk(ctx context.Context, id storage.ImageID) error {
	dst := filepath.Join(b.work, "restored", id.Name)
	defer os.RemoveAll(dst)
	_, err := storage.Restore(ctx, b.disk, id, b.key, dst)
	return err
}

func (b *bench) restoreS3(ctx context.Context, id storage.ImageID) error {
	dst := filepath.Join(b.work, "restored-s3", id.Name)
	defer os.RemoveAll(dst)
	_, err := storage.Restore(ctx, b.s3, id, b.key, dst)
	return err
}

// cpuTime is the user and system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loadAvg is the first field of /proc/loadavg: how busy the shared machine was.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Fields(string(data))[0]
}

func mbps(r result) float64 { return float64(r.bytes) / 1e6 / r.best.Seconds() }

func report(o options, results []result, loadBefore string) {
	byName := map[string]result{}
	for _, r := range results {
		byName[r.name] = r
	}
	fmt.Printf("# Checkpoint image store: throughput against plain operations (%s)\n\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Printf("`go run ./test/bench/storage -size-mib %d -files %d -part-mib %d -rounds %d`. An image of %d MiB of random bytes in %d files; "+
		"best of %d runs; %d CPUs (GOMAXPROCS), a shared machine. Object store: SeaweedFS `weed mini` on loopback (hack/seaweedfs-up.sh), "+
		"multipart parts of %d MiB. Sources are in the page cache; every write to disk is fsynced. "+
		"Load average %s before and %s after: the machine was shared, so wall times are noisy; the CPU column is this "+
		"process's user+system time in the best run (the server's is not in it).\n\n",
		o.sizeMiB, o.files, o.partMiB, o.rounds, o.sizeMiB, o.files, o.rounds, runtime.GOMAXPROCS(0), o.partMiB, loadBefore, loadAvg())
	fmt.Println("| operation | MB/s | time s | CPU s | vs the plain operation |")
	fmt.Println("|---|---|---|---|---|")
	for _, r := range results {
		ratio := "baseline"
		if r.baseline != "" {
			ratio = fmt.Sprintf("%.2fx of %s", mbps(r)/mbps(byName[r.baseline]), strings.SplitN(r.baseline, " (", 2)[0])
		}
		fmt.Printf("| %s | %.1f | %.2f | %.2f | %s |\n", r.name, mbps(r), r.best.Seconds(), r.cpu.Seconds(), ratio)
	}
}
