// Package image is the checkpoint image format: a folder with the CRIU image of one container
// (what `runc checkpoint --image-path` writes) and metadata.json, which says what was
// checkpointed and carries a checksum of every other file. The node agent writes images; the
// shim verifies one before it restores a container from it, so that a damaged or incomplete
// image is refused with a clear error before anything runs.
package image

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// MetadataFile is the name of the metadata file in an image folder.
const MetadataFile = "metadata.json"

// Version is the image format's version; Verify refuses others.
const Version = 1

// Errors Verify wraps, for callers that tell them apart.
var (
	// ErrMissing: the folder or its metadata.json is not there.
	ErrMissing = errors.New("checkpoint image missing")
	// ErrCorrupt: a file is missing, has another size or checksum, or metadata.json is
	// unreadable.
	ErrCorrupt = errors.New("checkpoint image corrupt")
)

// Metadata is metadata.json.
type Metadata struct {
	Version   int       `json:"version"`
	Pod       Pod       `json:"pod"`
	Container Container `json:"container"`
	// GPUs are the UUIDs of the GPUs the container's memory was on; empty for a container
	// without GPUs.
	GPUs []string `json:"gpus,omitempty"`
	// VRAMBytes is the GPU memory the image holds (in the processes' host memory, dumped by
	// CRIU).
	VRAMBytes         int64     `json:"vramBytes"`
	CRIUVersion       string    `json:"criuVersion,omitempty"`
	DriverVersion     string    `json:"driverVersion,omitempty"`
	CUDADriverVersion int32     `json:"cudaDriverVersion,omitempty"`
	Node              string    `json:"node,omitempty"`
	Created           time.Time `json:"created"`
	// Files are every file of the image but metadata.json, sorted by name.
	Files []File `json:"files"`
}

// Pod names the pod the container belonged to.
type Pod struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	UID       string `json:"uid,omitempty"`
}

// Container is the checkpointed container.
type Container struct {
	Name string `json:"name,omitempty"`
	// ID is the container's id in containerd.
	ID    string `json:"id"`
	Image string `json:"image,omitempty"`
}

// File is one file of the image, its path relative to the image folder.
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Write completes m with the image's files and their checksums and writes metadata.json into
// dir, atomically: a reader sees the whole file or none. The image is made private first:
// folders DirMode, files FileMode.
func Write(dir string, m Metadata) (Metadata, error) {
	if err := private(dir); err != nil {
		return Metadata{}, err
	}
	files, err := checksums(dir)
	if err != nil {
		return Metadata{}, err
	}
	if len(files) == 0 {
		return Metadata{}, fmt.Errorf("image %s holds no file", dir)
	}
	m.Version = Version
	m.Files = files
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Metadata{}, err
	}
	tmp, err := os.CreateTemp(dir, "."+MetadataFile+"-*")
	if err != nil {
		return Metadata{}, fmt.Errorf("writing %s: %w", MetadataFile, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return Metadata{}, fmt.Errorf("writing %s: %w", MetadataFile, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return Metadata{}, fmt.Errorf("writing %s: %w", MetadataFile, err)
	}
	if err := tmp.Close(); err != nil {
		return Metadata{}, fmt.Errorf("writing %s: %w", MetadataFile, err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, MetadataFile)); err != nil {
		return Metadata{}, fmt.Errorf("writing %s: %w", MetadataFile, err)
	}
	return m, nil
}

// Read reads dir's metadata.json without checking the files.
func Read(dir string) (Metadata, error) {
	if !filepath.IsAbs(dir) {
		return Metadata{}, fmt.Errorf("image %q: want an absolute path", dir)
	}
	data, err := os.ReadFile(filepath.Join(dir, MetadataFile))
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(dir); serr != nil {
			return Metadata{}, fmt.Errorf("image %s: no such folder: %w", dir, ErrMissing)
		}
		return Metadata{}, fmt.Errorf("image %s has no %s (not an image, or its checkpoint did not finish): %w", dir, MetadataFile, ErrMissing)
	}
	if err != nil {
		return Metadata{}, fmt.Errorf("image %s: %w", dir, err)
	}
	return decode(dir, data)
}

// decode parses dir's metadata.json, data: untrusted, as anything in an image folder.
func decode(dir string, data []byte) (Metadata, error) {
	var m Metadata
	if err := json.Unmarshal(data, &m); err != nil {
		return Metadata{}, fmt.Errorf("image %s: %s: %v: %w", dir, MetadataFile, err, ErrCorrupt)
	}
	if m.Version != Version {
		return Metadata{}, fmt.Errorf("image %s: format version %d, want %d: %w", dir, m.Version, Version, ErrCorrupt)
	}
	if len(m.Files) == 0 {
		return Metadata{}, fmt.Errorf("image %s: %s lists no file: %w", dir, MetadataFile, ErrCorrupt)
	}
	return m, nil
}

// Verify reads dir's metadata.json and checks every file it lists: present, same size, same
// SHA-256. Files the metadata does not list are allowed (a restore's logs, for one).
func Verify(dir string) (Metadata, error) {
	return check(dir, true)
}

// Check is Verify without the checksums: metadata.json read, every file it lists present, a
// regular file and of its size. It is for a folder whose contents were verified moments ago
// by the agent that hands it over: an image decrypted from a storage tier (every file's
// SHA-256 checked against the tier's authenticated manifest on the way), or one whose files
// were already read by its restore. Hashing 10 GB again costs about 11 s (H100 node).
func Check(dir string) (Metadata, error) {
	return check(dir, false)
}

func check(dir string, sums bool) (Metadata, error) {
	m, err := Read(dir)
	if err != nil {
		return Metadata{}, err
	}
	for _, f := range m.Files {
		if !filepath.IsLocal(f.Name) {
			return Metadata{}, fmt.Errorf("image %s: file name %q leaves the image: %w", dir, f.Name, ErrCorrupt)
		}
		p := filepath.Join(dir, f.Name)
		st, err := os.Lstat(p)
		if err != nil {
			return Metadata{}, fmt.Errorf("image %s: %s: %v: %w", dir, f.Name, err, ErrCorrupt)
		}
		if !st.Mode().IsRegular() {
			return Metadata{}, fmt.Errorf("image %s: %s is not a regular file: %w", dir, f.Name, ErrCorrupt)
		}
		if st.Size() != f.Size {
			return Metadata{}, fmt.Errorf("image %s: %s has %d bytes, metadata says %d: %w", dir, f.Name, st.Size(), f.Size, ErrCorrupt)
		}
		if !sums {
			continue
		}
		sum, err := sha256File(p)
		if err != nil {
			return Metadata{}, fmt.Errorf("image %s: %w", dir, err)
		}
		if sum != f.SHA256 {
			return Metadata{}, fmt.Errorf("image %s: %s has sha256 %s, metadata says %s: %w", dir, f.Name, sum, f.SHA256, ErrCorrupt)
		}
	}
	return m, nil
}

// checksums lists every regular file under dir but metadata.json (and its temporary files).
func checksums(dir string) ([]File, error) {
	var out []File
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == MetadataFile || strings.HasPrefix(rel, "."+MetadataFile+"-") {
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("image %s: %s is not a regular file", dir, rel)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		sum, err := sha256File(p)
		if err != nil {
			return err
		}
		out = append(out, File{Name: filepath.ToSlash(rel), Size: info.Size(), SHA256: sum})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("checksums of image %s: %w", dir, err)
	}
	slices.SortFunc(out, func(a, b File) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
