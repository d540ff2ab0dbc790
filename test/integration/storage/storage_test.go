package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/kybernate/kybernate/nodeagent/storage"
)

// partSize is the smallest S3 allows, so that the image's big file takes several parts.
const partSize = 5 << 20

// bigFile is larger than two parts once encrypted.
const bigFile = "pages-1.img"

// newS3 returns a tier on the test server under a prefix of its own.
func newS3(t *testing.T) *storage.S3 {
	t.Helper()
	cfg := need(t).Config
	cfg.PartSize = partSize
	cfg.Prefix = prefixFor(t)
	s3, err := storage.NewS3(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s3.EnsureBucket(t.Context()); err != nil {
		t.Fatalf("%v\nweed log:\n%s", err, server.Log(20))
	}
	return s3
}

// rawClient is a plain S3 client on the test server, to look behind the tier's back.
func rawClient(t *testing.T) *minio.Client {
	t.Helper()
	cfg := need(t).Config
	c, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds: credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, ""), Region: cfg.Region,
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func key(t *testing.T) storage.Key {
	t.Helper()
	k, err := storage.ParseKey(bytes.Repeat([]byte{0x42}, storage.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var id = storage.ImageID{Namespace: "team-a", Name: "trainer-0-3c2f"}

// writeImage writes an image folder whose big file spans several multipart parts.
func writeImage(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{
		"metadata.json":     []byte(`{"version":1,"pod":{"namespace":"team-a","name":"trainer-0"}}`),
		"empty.img":         nil,
		bigFile:             make([]byte, 2*partSize+777),
		"sub/inventory.img": []byte("inventory"),
	}
	rand.Read(files[bigFile])
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return files
}

func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	got := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		data, err := os.ReadFile(p)
		got[filepath.ToSlash(rel)] = data
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func newDisk(t *testing.T) *storage.Disk {
	t.Helper()
	d, err := storage.NewDisk(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// spill puts a fresh image on a disk tier, as the agent does before moving it to S3.
func spill(t *testing.T) (*storage.Disk, map[string][]byte) {
	t.Helper()
	src := t.TempDir()
	files := writeImage(t, src)
	disk := newDisk(t)
	if _, err := storage.Put(t.Context(), disk, id, key(t), src); err != nil {
		t.Fatal(err)
	}
	return disk, files
}

func restoreAndCompare(t *testing.T, tier storage.Tier, want map[string][]byte) {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "restored")
	if _, err := storage.Restore(t.Context(), tier, id, key(t), dst); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, readTree(t, dst), cmp.Comparer(bytes.Equal)); diff != "" {
		t.Errorf("restored files differ (-want +got):\n%s", diff)
	}
}

// Disk -> S3 -> another disk -> restore, and S3 -> restore directly; the big file went up in
// several parts.
func TestRoundTripThroughS3(t *testing.T) {
	ctx := t.Context()
	disk, files := spill(t)
	s3 := newS3(t)
	res, err := storage.Copy(ctx, disk, s3, id)
	if err != nil {
		t.Fatal(err)
	}
	if res.Copied != len(files) || res.Skipped != 0 {
		t.Errorf("Copy copied %d and skipped %d files, want %d and 0", res.Copied, res.Skipped, len(files))
	}
	info, err := rawClient(t).StatObject(ctx, need(t).Config.Bucket, s3Key(t, bigFile), minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(info.ETag, "-3") {
		t.Errorf("%s has ETag %q; want a multipart ETag of 3 parts", bigFile, info.ETag)
	}
	restoreAndCompare(t, s3, files)

	back := newDisk(t)
	if _, err := storage.Copy(ctx, s3, back, id); err != nil {
		t.Fatal(err)
	}
	restoreAndCompare(t, back, files)

	// Put straight from a folder into S3 works too.
	direct := storage.ImageID{Namespace: "team-a", Name: "direct"}
	src := t.TempDir()
	files2 := writeImage(t, src)
	if _, err := storage.Put(ctx, s3, direct, key(t), src); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "direct")
	if _, err := storage.Restore(ctx, s3, direct, key(t), dst); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(files2, readTree(t, dst), cmp.Comparer(bytes.Equal)); diff != "" {
		t.Errorf("restored files differ (-want +got):\n%s", diff)
	}
}

var (
	prefixMu sync.Mutex
	prefixes = map[*testing.T]string{}
)

// prefixFor is the object prefix of a test's tier: the test's name and a random part, so
// that a run with -count=N or a server kept from before starts empty.
func prefixFor(t *testing.T) string {
	prefixMu.Lock()
	defer prefixMu.Unlock()
	if p, ok := prefixes[t]; ok {
		return p
	}
	p := fmt.Sprintf("%s-%s/", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), rand.Text()[:8])
	prefixes[t] = strings.ToLower(p)
	t.Cleanup(func() {
		prefixMu.Lock()
		delete(prefixes, t)
		prefixMu.Unlock()
	})
	return prefixes[t]
}

// s3Key is the full object name of a file of the image in the test's tier.
func s3Key(t *testing.T, file string) string {
	return prefixFor(t) + id.Namespace + "/" + id.Name + "/files/" + file
}

// A server nobody listens on: a clear error naming the endpoint, and the disk copy stays
// usable.
func TestUnreachableServerKeepsDiskCopy(t *testing.T) {
	disk, files := spill(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := l.Addr().String()
	l.Close()
	cfg := need(t).Config
	cfg.Endpoint, cfg.MaxRetries = endpoint, 2
	s3, err := storage.NewS3(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	_, err = storage.Copy(ctx, disk, s3, id)
	if err == nil {
		t.Fatal("Copy to an unreachable server succeeded")
	}
	if !strings.Contains(err.Error(), endpoint) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error %q does not name the endpoint %s and the cause", err, endpoint)
	}
	t.Logf("error: %v", err)
	restoreAndCompare(t, disk, files)
}

// A changed object in S3 is refused naming the file: by Restore and by a fetch to disk; the
// objects stay.
func TestTamperedObjectRefused(t *testing.T) {
	ctx := t.Context()
	disk, _ := spill(t)
	s3 := newS3(t)
	if _, err := storage.Copy(ctx, disk, s3, id); err != nil {
		t.Fatal(err)
	}
	c, bucket := rawClient(t), need(t).Config.Bucket
	objKey := s3Key(t, bigFile)
	obj, err := c.GetObject(ctx, bucket, objKey, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(obj)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x80
	if _, err := c.PutObject(ctx, bucket, objKey, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	before, err := s3.List(ctx, id.Namespace+"/")
	if err != nil {
		t.Fatal(err)
	}

	dst := filepath.Join(t.TempDir(), "restored")
	_, err = storage.Restore(ctx, s3, id, key(t), dst)
	if !errors.Is(err, storage.ErrCorrupt) || !strings.Contains(err.Error(), bigFile) {
		t.Fatalf("Restore of a tampered image: %v; want ErrCorrupt naming %s", err, bigFile)
	}
	t.Logf("restore refused: %v", err)
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Errorf("destination exists after a refused restore: %v", err)
	}
	_, err = storage.Copy(ctx, s3, newDisk(t), id)
	if !errors.Is(err, storage.ErrCorrupt) || !strings.Contains(err.Error(), bigFile) {
		t.Fatalf("fetch of a tampered image: %v; want ErrCorrupt naming %s", err, bigFile)
	}
	after, err := s3.List(ctx, id.Namespace+"/")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("objects changed after refusals (-before +after):\n%s", diff)
	}
}
