package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Disk is the local-disk tier: each object a file under Root, written to a temporary file,
// synced and renamed into place.
type Disk struct {
	Root string
}

var _ Tier = (*Disk)(nil)

// NewDisk returns the tier in root, creating the folder (0700) when it is missing.
func NewDisk(root string) (*Disk, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("disk tier %q: want an absolute path", root)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("disk tier: %w", err)
	}
	return &Disk{Root: root}, nil
}

func (d *Disk) String() string { return "disk " + d.Root }

func (d *Disk) path(key string) (string, error) {
	if !filepath.IsLocal(filepath.FromSlash(key)) {
		return "", fmt.Errorf("disk tier: key %q leaves the tier", key)
	}
	return filepath.Join(d.Root, filepath.FromSlash(key)), nil
}

// Put writes the object; a crash or error leaves at most a temporary file, which List skips.
func (d *Disk) Put(ctx context.Context, key string, r io.Reader, size int64, _ string) (err error) {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("%s: %w", d, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-"+filepath.Base(p)+"-*")
	if err != nil {
		return fmt.Errorf("%s: %w", d, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	n, err := io.Copy(tmp, ctxReader{ctx: ctx, r: r})
	if err != nil {
		return fmt.Errorf("%s: writing %s: %w", d, key, err)
	}
	if n != size {
		return fmt.Errorf("%s: writing %s: got %d bytes, want %d", d, key, n, size)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("%s: writing %s: %w", d, key, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("%s: writing %s: %w", d, key, err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return fmt.Errorf("%s: writing %s: %w", d, key, err)
	}
	return syncDir(filepath.Dir(p))
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func (d *Disk) Get(_ context.Context, key string) (io.ReadCloser, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %s: %w", d, key, ErrObjectNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d, err)
	}
	return f, nil
}

func (d *Disk) Stat(_ context.Context, key string) (ObjectInfo, error) {
	p, err := d.path(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	st, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return ObjectInfo{}, fmt.Errorf("%s: %s: %w", d, key, ErrObjectNotFound)
	}
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("%s: %w", d, err)
	}
	if !st.Mode().IsRegular() {
		return ObjectInfo{}, fmt.Errorf("%s: %s is not a regular file", d, key)
	}
	return ObjectInfo{Size: st.Size()}, nil
}

// Delete removes the object and the folders it leaves empty.
func (d *Disk) Delete(_ context.Context, key string) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", d, err)
	}
	for dir := filepath.Dir(p); dir != d.Root && strings.HasPrefix(dir, d.Root); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break
		}
	}
	return nil
}

// List walks the folder of prefix (the whole tier for ""). It lists the temporary files of Puts that a crash
// interrupted too (named .tmp-*), so that Delete removes them with the image.
func (d *Disk) List(_ context.Context, prefix string) ([]string, error) {
	dir := d.Root
	if prefix != "" {
		var err error
		if dir, err = d.path(strings.TrimSuffix(prefix, "/")); err != nil {
			return nil, err
		}
	}
	var keys []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == dir {
			return fs.SkipAll
		}
		if err != nil {
			return err
		}
		if e.Type().IsRegular() {
			rel, err := filepath.Rel(d.Root, p)
			if err != nil {
				return err
			}
			keys = append(keys, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: listing %s: %w", d, prefix, err)
	}
	return keys, nil
}
