package storage

import (
	"bytes"
	"context"
	"errors"
	"io"
)

// Tier is where images are stored: a flat namespace of objects under slash-separated keys.
// The image functions of this package (Put, Copy, Restore, Stat, Delete) work on any Tier;
// Disk and S3 are the two the agent has.
type Tier interface {
	// String names the tier in errors and logs (never with credentials).
	String() string
	// Put stores size bytes from r under key, replacing what is there. storedSHA256, when
	// not empty, is the hex SHA-256 of the bytes, kept with the object for Stat. A failed or
	// interrupted Put leaves either the old object or none, never part of the new one.
	Put(ctx context.Context, key string, r io.Reader, size int64, storedSHA256 string) error
	// Get opens the object under key; ErrObjectNotFound when there is none.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Stat says what is stored under key; ErrObjectNotFound when there is none.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// Delete removes the object under key; no error when there is none.
	Delete(ctx context.Context, key string) error
	// List returns the keys under prefix, in any order (on a disk, with the temporary files
	// of interrupted Puts).
	List(ctx context.Context, prefix string) ([]string, error)
}

// ObjectInfo is what a tier knows about an object.
type ObjectInfo struct {
	Size int64
	// SHA256 is the hex SHA-256 given to Put; empty when the tier does not keep it.
	SHA256 string
}

// ErrObjectNotFound: a Tier holds no object under the key.
var ErrObjectNotFound = errors.New("object not found")

// ctxReader stops a copy when its context ends, for tiers whose writes do not watch one.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
