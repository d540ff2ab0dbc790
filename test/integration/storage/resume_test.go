package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kybernate/kybernate/nodeagent/storage"
)

// The upload is done by a child process (this test binary in helper mode), killed with
// SIGKILL in the middle of the big file's multipart upload, as an agent that dies.
const (
	helperEnv   = "KYBERNATE_STORAGE_TEST_HELPER"
	stallAfter  = partSize + partSize/2 // bytes of the big file sent before the child stalls
	helperUsage = "helper: copy DISK_ROOT PREFIX MARKER (S3 settings in S3_* variables)"
)

// TestResumeAfterKilledUpload: a killed Copy leaves no image in S3 (no manifest) and an
// unfinished multipart upload; the next Copy aborts that upload, sends only what is missing,
// and the image restores.
func TestResumeAfterKilledUpload(t *testing.T) {
	ctx := t.Context()
	disk, files := spill(t)
	s3 := newS3(t)
	marker := filepath.Join(t.TempDir(), "stalled")

	cfg := need(t).Config
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=copy",
		"HELPER_DISK="+disk.Root, "HELPER_PREFIX="+prefixFor(t), "HELPER_MARKER="+marker,
		"S3_ENDPOINT="+cfg.Endpoint, "S3_BUCKET="+cfg.Bucket, "S3_REGION="+cfg.Region,
		"S3_ACCESS_KEY_ID="+cfg.AccessKeyID, "S3_SECRET_ACCESS_KEY="+cfg.SecretAccessKey)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waitForFile(t, marker, exited)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited

	if _, err := storage.Stat(ctx, s3, id, key(t)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat after the killed upload: %v; want ErrNotFound (no manifest)", err)
	}
	if n := incompleteUploads(t); n == 0 {
		t.Error("no unfinished multipart upload after the kill; the child was not killed mid-upload")
	}

	res, err := storage.Copy(ctx, disk, s3, id)
	if err != nil {
		t.Fatal(err)
	}
	// Files sort as empty.img, metadata.json, pages-1.img, sub/...: the first two were up.
	if res.Skipped != 2 || res.Copied != len(files)-2 {
		t.Errorf("resumed Copy skipped %d and copied %d files, want 2 and %d", res.Skipped, res.Copied, len(files)-2)
	}
	// The resumed Copy aborted the killed one's multipart upload: its parts are not kept.
	if n := incompleteUploads(t); n != 0 {
		t.Errorf("%d unfinished uploads after the resumed Copy, want the killed one's aborted", n)
	}
	restoreAndCompare(t, s3, files)
}

// waitForFile waits until path exists; it fails when the child exits first.
func waitForFile(t *testing.T, path string, exited <-chan error) {
	t.Helper()
	deadline := time.After(2 * time.Minute)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		select {
		case err := <-exited:
			t.Fatalf("the uploading child exited before it stalled: %v", err)
		case <-deadline:
			t.Fatal("the uploading child did not stall within 2 minutes")
		case <-tick.C:
		}
	}
}

func incompleteUploads(t *testing.T) int {
	t.Helper()
	n := 0
	for up := range rawClient(t).ListIncompleteUploads(t.Context(), need(t).Config.Bucket, prefixFor(t), true) {
		if up.Err != nil {
			t.Fatal(up.Err)
		}
		n++
	}
	return n
}

// helperMain is the child: Copy from the disk tier to S3, stalling (and touching the
// marker) once stallAfter bytes of the big file were read.
func helperMain() int {
	if err := helperCopy(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func helperCopy() error {
	disk, err := storage.NewDisk(os.Getenv("HELPER_DISK"))
	if err != nil {
		return err
	}
	s3, err := storage.NewS3(storage.S3Config{
		Endpoint: os.Getenv("S3_ENDPOINT"), Bucket: os.Getenv("S3_BUCKET"), Region: os.Getenv("S3_REGION"),
		PathStyle: true, AccessKeyID: os.Getenv("S3_ACCESS_KEY_ID"), SecretAccessKey: os.Getenv("S3_SECRET_ACCESS_KEY"),
		Prefix: os.Getenv("HELPER_PREFIX"), PartSize: partSize,
	})
	if err != nil {
		return err
	}
	marker := os.Getenv("HELPER_MARKER")
	if marker == "" {
		return errors.New(helperUsage)
	}
	_, err = storage.Copy(context.Background(), &stallingTier{Tier: disk, marker: marker}, s3, id)
	return err
}

// stallingTier hands out the big file's first stallAfter bytes, then blocks for good.
type stallingTier struct {
	storage.Tier
	marker string
}

func (s *stallingTier) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := s.Tier.Get(ctx, key)
	if err != nil || !strings.HasSuffix(key, "/"+bigFile) {
		return rc, err
	}
	return &stallingReader{ReadCloser: rc, left: stallAfter, marker: s.marker}, nil
}

type stallingReader struct {
	io.ReadCloser
	left   int64
	marker string
}

func (r *stallingReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		// The parts before were sent (minio-go uploads a part once it has read it whole).
		_ = os.WriteFile(r.marker, nil, 0o600)
		for {
			time.Sleep(time.Hour) // until the test kills the process
		}
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.ReadCloser.Read(p)
	r.left -= int64(n)
	return n, err
}
