package storage

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"
)

// Restore decrypts the image id from t into the folder dst, which must not exist. It checks
// the manifest (key, MAC), authenticates every chunk and compares every file's size and
// SHA-256 with the manifest before dst appears: the files are written into a temporary
// sibling folder that is renamed to dst only when all of them passed. A damaged or tampered
// image is refused with ErrCorrupt naming the file; the stored image is left as it is.
func Restore(ctx context.Context, t Tier, id ImageID, key Key, dst string) (Manifest, error) {
	if !filepath.IsAbs(dst) {
		return Manifest{}, fmt.Errorf("restore: destination %q: want an absolute path", dst)
	}
	if _, err := os.Lstat(dst); err == nil {
		return Manifest{}, fmt.Errorf("restore: destination %s exists", dst)
	}
	m, err := Stat(ctx, t, id, key)
	if err != nil {
		return Manifest{}, err
	}
	start := time.Now()
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return Manifest{}, fmt.Errorf("restore: %w", err)
	}
	staging, err := os.MkdirTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".partial-")
	if err != nil {
		return Manifest{}, fmt.Errorf("restore: %w", err)
	}
	defer os.RemoveAll(staging)
	for _, f := range m.Files {
		if err := restoreFile(ctx, t, m, key, f, staging); err != nil {
			return Manifest{}, err
		}
	}
	if err := os.Rename(staging, dst); err != nil {
		return Manifest{}, fmt.Errorf("restore: %w", err)
	}
	klog.FromContext(ctx).V(2).Info("Restored image", "image", id.String(), "tier", t.String(), "dir", dst,
		"files", len(m.Files), "bytes", m.Size(), "duration", time.Since(start))
	return m, nil
}

// restoreFile decrypts one file into dir, hashing the stored bytes and the plaintext.
func restoreFile(ctx context.Context, t Tier, m Manifest, key Key, f FileEntry, dir string) error {
	id := m.Image
	rc, err := t.Get(ctx, id.fileKey(f.Name))
	if errors.Is(err, ErrObjectNotFound) {
		return fmt.Errorf("image %s in %s: file %s is missing: %w", id, t, f.Name, ErrCorrupt)
	}
	if err != nil {
		return fmt.Errorf("image %s: file %s: %w", id, f.Name, err)
	}
	defer rc.Close()
	p := filepath.Join(dir, filepath.FromSlash(f.Name))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	plain := sha256.New()
	n, err := decryptInto(ctx, rc, key, id.place(f.Name), out, plain)
	if err != nil {
		return corruption(ctx, t, id, f, err)
	}
	if n != f.Size {
		return fmt.Errorf("image %s in %s: file %s has %d bytes, the manifest says %d: %w", id, t, f.Name, n, f.Size, ErrCorrupt)
	}
	if got := sha256Hex(plain.Sum(nil)); got != f.SHA256 {
		return fmt.Errorf("image %s in %s: file %s has sha256 %s, the manifest says %s: %w", id, t, f.Name, got, f.SHA256, ErrCorrupt)
	}
	if err := out.Sync(); err != nil {
		return err
	}
	return out.Close()
}

// decryptInto decrypts r into out and h, the reading and decryption in a goroutine of their
// own, so that they overlap with the writes to out.
func decryptInto(ctx context.Context, r io.Reader, key Key, place string, out io.Writer, h hash.Hash) (int64, error) {
	pr, pw := io.Pipe()
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := decryptFile(ctxReader{ctx: ctx, r: r}, key, place, io.MultiWriter(pw, h))
		pw.CloseWithError(err)
		done <- result{n, err}
	}()
	// A plain Writer, so that io.CopyBuffer uses the buffer of a whole chunk.
	_, werr := io.CopyBuffer(struct{ io.Writer }{out}, pr, make([]byte, DefaultChunkSize))
	pr.CloseWithError(errors.New("restore stopped writing"))
	res := <-done
	if werr != nil {
		return res.n, werr
	}
	return res.n, res.err
}

func decryptFile(r io.Reader, key Key, place string, w io.Writer) (int64, error) {
	dec, err := NewDecrypter(r, key, place)
	if err != nil {
		return 0, err
	}
	return io.Copy(w, dec)
}

// corruption explains a failed decryption.
func corruption(ctx context.Context, t Tier, id ImageID, f FileEntry, err error) error {
	if ctx.Err() != nil || !errors.Is(err, ErrAuthentication) {
		return fmt.Errorf("image %s: file %s: %w", id, f.Name, err)
	}
	return fmt.Errorf("image %s in %s: file %s was changed, cut short, extended or reordered (%v): %w", id, t, f.Name, err, ErrCorrupt)
}
