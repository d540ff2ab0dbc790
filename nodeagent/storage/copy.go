package storage

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"time"

	"k8s.io/klog/v2"
)

// CopyResult says what a Copy did.
type CopyResult struct {
	Manifest Manifest
	// Copied and Skipped count the files copied and those the destination already held
	// (from an interrupted Copy), BytesCopied the stored bytes moved.
	Copied, Skipped int
	BytesCopied     int64
}

// Copy moves the image id from one tier to another as it is stored (still encrypted, so
// without a key), checking every object against the manifest's stored SHA-256 and size on
// the way, and writes the manifest to the destination last. Objects the destination already
// holds with the right size and SHA-256 (an earlier Copy that was interrupted) are not sent
// again. A source object that does not match its manifest stops the copy with ErrCorrupt
// naming the file; the source is never changed. It refuses (ErrExists) when the destination
// already holds a complete image under id, and returns ErrCorrupt when the destination holds
// one with a damaged manifest. An interrupted Copy's unfinished multipart uploads under id are
// aborted first (see UploadAborter).
func Copy(ctx context.Context, from, to Tier, id ImageID) (CopyResult, error) {
	m, data, err := readManifestData(ctx, from, id)
	if err != nil {
		return CopyResult{}, err
	}
	if _, err := readManifest(ctx, to, id); err == nil {
		return CopyResult{}, fmt.Errorf("%s: image %s: %w", to, id, ErrExists)
	} else if !errors.Is(err, ErrNotFound) {
		return CopyResult{}, err
	}
	abortUploads(ctx, to, id)
	start := time.Now()
	res := CopyResult{Manifest: m}
	for _, f := range m.Files {
		done, err := holds(ctx, to, id.fileKey(f.Name), f)
		if err != nil {
			return res, fmt.Errorf("image %s: file %s: %w", id, f.Name, err)
		}
		if done {
			res.Skipped++
			continue
		}
		if err := copyObject(ctx, from, to, id, f); err != nil {
			return res, err
		}
		res.Copied++
		res.BytesCopied += f.StoredSize
	}
	sum := sha256.Sum256(data)
	if err := to.Put(ctx, id.manifestKey(), bytesReader(data), int64(len(data)), sha256Hex(sum[:])); err != nil {
		return res, fmt.Errorf("image %s: writing the manifest: %w", id, err)
	}
	klog.FromContext(ctx).V(2).Info("Copied image", "image", id.String(), "from", from.String(), "to", to.String(),
		"copied", res.Copied, "skipped", res.Skipped, "bytes", res.BytesCopied, "duration", time.Since(start))
	return res, nil
}

// UploadAborter is a tier that keeps the parts of unfinished multipart uploads (S3): an
// upload cut off by a killed agent or a lost connection leaves them stored, invisible to Get
// and Stat, until they are aborted.
type UploadAborter interface {
	AbortUploads(ctx context.Context, prefix string) error
}

// abortUploads aborts the unfinished uploads under id in t, if t keeps any. Only the image's
// one mover (its node's agent, holding it) copies to it, so they are an earlier Copy's. A
// failure is logged, not returned: the parts cost storage, not correctness.
func abortUploads(ctx context.Context, t Tier, id ImageID) {
	a, ok := t.(UploadAborter)
	if !ok {
		return
	}
	if err := a.AbortUploads(ctx, id.prefix()); err != nil {
		klog.FromContext(ctx).Info("Aborting the unfinished uploads of an image failed; their parts stay stored", "image", id.String(), "tier", t.String(), "err", err)
	}
}

// holds reports whether t already has the stored object of f under key.
func holds(ctx context.Context, t Tier, key string, f FileEntry) (bool, error) {
	info, err := t.Stat(ctx, key)
	if errors.Is(err, ErrObjectNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if info.Size != f.StoredSize {
		return false, nil
	}
	if info.SHA256 != "" {
		return info.SHA256 == f.StoredSHA256, nil
	}
	// A tier that keeps no digest (a disk) is read back; that is cheap next to sending it.
	rc, err := t.Get(ctx, key)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		return false, err
	}
	return sha256Hex(h.Sum(nil)) == f.StoredSHA256, nil
}

// copyObject streams one stored file, hashing it on the way. When the source does not match
// the manifest the destination object is deleted again (it would never be used, but must not
// pass for a finished one on a resumed Copy either; its digest does not match, so holds
// would refuse it anyway).
func copyObject(ctx context.Context, from, to Tier, id ImageID, f FileEntry) error {
	key := id.fileKey(f.Name)
	rc, err := from.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("image %s: file %s: %w", id, f.Name, err)
	}
	defer rc.Close()
	h := sha256.New()
	short := fmt.Errorf("image %s: file %s in %s is shorter than the manifest says (%d bytes): %w", id, f.Name, from, f.StoredSize, ErrCorrupt)
	src := &exactReader{r: io.LimitReader(rc, f.StoredSize), left: f.StoredSize, short: short}
	if err := to.Put(ctx, key, io.TeeReader(src, h), f.StoredSize, f.StoredSHA256); err != nil {
		if src.failed {
			return short
		}
		return fmt.Errorf("image %s: file %s: %w", id, f.Name, err)
	}
	if got := sha256Hex(h.Sum(nil)); got != f.StoredSHA256 {
		_ = to.Delete(ctx, key)
		return fmt.Errorf("image %s: file %s in %s has sha256 %s, the manifest says %s (changed or damaged; nothing copied): %w",
			id, f.Name, from, got, f.StoredSHA256, ErrCorrupt)
	}
	return nil
}

// exactReader turns an early end of r into the error short.
type exactReader struct {
	r      io.Reader
	left   int64
	short  error
	failed bool
}

func (e *exactReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.left -= int64(n)
	if errors.Is(err, io.EOF) && e.left > 0 {
		e.failed = true
		return n, e.short
	}
	return n, err
}
