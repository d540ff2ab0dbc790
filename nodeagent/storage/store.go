package storage

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// Stat reads and checks the manifest of id in t: ErrNotFound when the tier holds no complete
// image, ErrWrongKey or ErrCorrupt when the manifest was not written with key or was changed.
func Stat(ctx context.Context, t Tier, id ImageID, key Key) (Manifest, error) {
	m, err := readManifest(ctx, t, id)
	if err != nil {
		return Manifest{}, err
	}
	if err := m.Verify(key); err != nil {
		return Manifest{}, fmt.Errorf("%s: %w", t, err)
	}
	return m, nil
}

// Exists reports whether t holds a complete image under id (its manifest), without reading it:
// a caller that has no key yet learns whether it needs one.
func Exists(ctx context.Context, t Tier, id ImageID) (bool, error) {
	if err := id.Validate(); err != nil {
		return false, err
	}
	_, err := t.Stat(ctx, id.manifestKey())
	if errors.Is(err, ErrObjectNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s: image %s: %w", t, id, err)
	}
	return true, nil
}

// readManifest reads the manifest without its MAC check (Copy moves images without keys).
func readManifest(ctx context.Context, t Tier, id ImageID) (Manifest, error) {
	m, _, err := readManifestData(ctx, t, id)
	return m, err
}

// readManifestData also returns the manifest's bytes, for Copy to write exactly what it
// checked.
func readManifestData(ctx context.Context, t Tier, id ImageID) (Manifest, []byte, error) {
	if err := id.Validate(); err != nil {
		return Manifest{}, nil, err
	}
	rc, err := t.Get(ctx, id.manifestKey())
	if errors.Is(err, ErrObjectNotFound) {
		return Manifest{}, nil, fmt.Errorf("%s: image %s: %w", t, id, ErrNotFound)
	}
	if err != nil {
		return Manifest{}, nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxManifestSize+1))
	if err != nil {
		return Manifest{}, nil, fmt.Errorf("%s: image %s: reading the manifest: %w", t, id, err)
	}
	m, err := ParseManifest(data)
	if err != nil {
		return Manifest{}, nil, fmt.Errorf("%s: image %s: %w", t, id, err)
	}
	if m.Image != id {
		return Manifest{}, nil, fmt.Errorf("%s: image %s: manifest is of image %s: %w", t, id, m.Image, ErrCorrupt)
	}
	return m, data, nil
}

// Put encrypts the image folder src into t under id, file by file, streaming, and writes the
// manifest last. It refuses (ErrExists) when t already holds a complete image under id, and
// returns the error when its manifest is damaged (ErrCorrupt): Delete it first. A Put that fails leaves file objects without a manifest, which no reader uses; Put again
// overwrites them, Delete removes them.
func Put(ctx context.Context, t Tier, id ImageID, key Key, src string) (Manifest, error) {
	if err := id.Validate(); err != nil {
		return Manifest{}, err
	}
	if key.IsZero() {
		return Manifest{}, errors.New("put: no image key")
	}
	// A damaged image is kept for inspection as much as a good one: only Delete removes it.
	if _, err := readManifest(ctx, t, id); err == nil {
		return Manifest{}, fmt.Errorf("%s: image %s: %w", t, id, ErrExists)
	} else if !errors.Is(err, ErrNotFound) {
		return Manifest{}, err
	}
	names, err := listFiles(src)
	if err != nil {
		return Manifest{}, err
	}
	logger := klog.FromContext(ctx)
	start := time.Now()
	m := Manifest{
		Version:    ManifestVersion,
		Image:      id,
		Created:    time.Now().UTC().Truncate(time.Second),
		Encryption: Encryption{Algorithm: Algorithm, ChunkSize: DefaultChunkSize},
	}
	for _, name := range names {
		f, err := putFile(ctx, t, id, key, src, name)
		if err != nil {
			return Manifest{}, err
		}
		m.Files = append(m.Files, f)
	}
	if err := writeManifest(ctx, t, &m, key); err != nil {
		return Manifest{}, err
	}
	logger.V(2).Info("Stored image", "image", id.String(), "tier", t.String(), "files", len(m.Files), "bytes", m.Size(), "duration", time.Since(start))
	return m, nil
}

func writeManifest(ctx context.Context, t Tier, m *Manifest, key Key) error {
	data, err := m.seal(key)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if err := t.Put(ctx, m.Image.manifestKey(), bytesReader(data), int64(len(data)), sha256Hex(sum[:])); err != nil {
		return fmt.Errorf("image %s: writing the manifest: %w", m.Image, err)
	}
	return nil
}

// listFiles lists the regular files of an image folder, sorted; anything else is refused.
func listFiles(src string) ([]string, error) {
	var names []string
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file", rel)
		}
		if err := checkFileName(rel); err != nil {
			return err
		}
		names = append(names, rel)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("image folder %s: %w", src, err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("image folder %s holds no file", src)
	}
	slices.Sort(names)
	return names, nil
}

// putFile streams one file through SHA-256 and the encrypter into the tier.
func putFile(ctx context.Context, t Tier, id ImageID, key Key, src, name string) (FileEntry, error) {
	f, err := os.Open(filepath.Join(src, filepath.FromSlash(name)))
	if err != nil {
		return FileEntry{}, fmt.Errorf("image %s: %w", id, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return FileEntry{}, fmt.Errorf("image %s: %w", id, err)
	}
	entry := FileEntry{Name: name, Size: st.Size(), StoredSize: EncryptedSize(st.Size(), DefaultChunkSize)}
	plainSum, storedSum := sha256.New(), sha256.New()
	pr, pw := io.Pipe()
	encErr := make(chan error, 1)
	go func() {
		err := encryptTo(io.MultiWriter(pw, storedSum), io.TeeReader(f, plainSum), key, id.place(name), entry.Size)
		pw.CloseWithError(err)
		encErr <- err
	}()
	err = t.Put(ctx, id.fileKey(name), pr, entry.StoredSize, "")
	pr.CloseWithError(errors.New("upload ended"))
	// The encrypter is done with f and the hashes once it returns.
	if eerr := <-encErr; err == nil && eerr != nil {
		err = eerr
	}
	if err != nil {
		return FileEntry{}, fmt.Errorf("image %s: file %s: %w", id, name, err)
	}
	entry.SHA256 = sha256Hex(plainSum.Sum(nil))
	entry.StoredSHA256 = sha256Hex(storedSum.Sum(nil))
	return entry, nil
}

// encryptTo encrypts exactly size bytes of r into w: a file that grows or shrinks while it is
// read would not match its manifest entry.
func encryptTo(w io.Writer, r io.Reader, key Key, place string, size int64) error {
	enc, err := NewEncrypter(w, key, place, DefaultChunkSize)
	if err != nil {
		return err
	}
	n, err := io.Copy(enc, io.LimitReader(r, size+1))
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("file changed while it was stored: %d bytes, want %d", n, size)
	}
	return enc.Close()
}

// Delete removes the image id from t: the manifest first, so that it stops being an image at
// once, then every object under its prefix (those of unfinished moves too).
func Delete(ctx context.Context, t Tier, id ImageID) error {
	if err := id.Validate(); err != nil {
		return err
	}
	if err := t.Delete(ctx, id.manifestKey()); err != nil {
		return err
	}
	keys, err := t.List(ctx, id.prefix())
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := t.Delete(ctx, k); err != nil {
			return err
		}
	}
	klog.FromContext(ctx).V(2).Info("Deleted image", "image", id.String(), "tier", t.String())
	return nil
}

// ListImages returns the images t holds, complete or not (objects of an unfinished Put or
// Copy without a manifest count too, so that Delete can clear them), sorted. Keys that do not
// have the form <namespace>/<name>/manifest.json or <namespace>/<name>/files/... are not
// images of this package and are skipped: a bucket may hold other things.
func ListImages(ctx context.Context, t Tier) ([]ImageID, error) {
	keys, err := t.List(ctx, "")
	if err != nil {
		return nil, err
	}
	seen := map[ImageID]bool{}
	var out []ImageID
	for _, k := range keys {
		parts := strings.SplitN(k, "/", 3)
		if len(parts) != 3 || (parts[2] != manifestObject && !strings.HasPrefix(parts[2], filesDir)) {
			continue
		}
		id := ImageID{Namespace: parts[0], Name: parts[1]}
		if seen[id] || id.Validate() != nil {
			continue
		}
		seen[id] = true
		out = append(out, id)
	}
	slices.SortFunc(out, func(a, b ImageID) int { return strings.Compare(a.String(), b.String()) })
	return out, nil
}
