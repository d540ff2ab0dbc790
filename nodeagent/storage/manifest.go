package storage

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"strings"
	"time"
)

const (
	// ManifestVersion is the manifest format's version; others are refused.
	ManifestVersion = 1
	// Algorithm names the encryption of the files (see the package doc).
	Algorithm = "AES256-GCM-HKDF-SHA256-STREAM"

	manifestObject  = "manifest.json"
	filesDir        = "files/"
	maxManifestSize = 4 << 20
	maxFiles        = 100000
	manifestMACInfo = "kybernate image manifest v1"
)

// Errors the package wraps, for callers that tell them apart.
var (
	// ErrNotFound: the tier holds no complete image (no manifest) under the id.
	ErrNotFound = errors.New("image not found")
	// ErrExists: the tier already holds a complete image under the id.
	ErrExists = errors.New("image already exists")
	// ErrCorrupt: the manifest or a file of the image is damaged or was tampered with.
	ErrCorrupt = errors.New("image corrupt")
	// ErrWrongKey: the image was encrypted with another key than the one given.
	ErrWrongKey = errors.New("image encrypted with another key")
)

// ImageID names an image: the namespace of its pod (whose key encrypts it) and a name unique
// in the namespace (the agent uses <pod>-<UID of the GPUCheckpoint>).
type ImageID struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

var (
	namespaceRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	nameRE      = regexp.MustCompile(`^[a-z0-9]([-a-z0-9._]{0,251}[a-z0-9])?$`)
)

// Validate checks that id can name objects: a namespace that is a DNS label and a name of
// lowercase letters, digits, '-', '.', '_' (no "..").
func (id ImageID) Validate() error {
	if !namespaceRE.MatchString(id.Namespace) {
		return fmt.Errorf("image id: namespace %q is not a DNS label", id.Namespace)
	}
	if !nameRE.MatchString(id.Name) || strings.Contains(id.Name, "..") {
		return fmt.Errorf("image id: name %q: want lowercase letters, digits, '-', '.', '_', at most 253", id.Name)
	}
	return nil
}

func (id ImageID) String() string { return id.Namespace + "/" + id.Name }

func (id ImageID) prefix() string             { return id.Namespace + "/" + id.Name + "/" }
func (id ImageID) manifestKey() string        { return id.prefix() + manifestObject }
func (id ImageID) fileKey(name string) string { return id.prefix() + filesDir + name }

// place is what a file's key is bound to, so that its ciphertext does not decrypt elsewhere.
func (id ImageID) place(name string) string { return id.String() + "\x00" + name }

// Manifest describes a stored image.
type Manifest struct {
	Version    int        `json:"version"`
	Image      ImageID    `json:"image"`
	Created    time.Time  `json:"created"`
	Encryption Encryption `json:"encryption"`
	// Files are every file of the image, sorted by name.
	Files []FileEntry `json:"files"`
	// MAC is the HMAC-SHA256 (hex) of the manifest with MAC empty, under a key derived from
	// the namespace's key.
	MAC string `json:"mac"`
}

// Encryption says how the files are encrypted.
type Encryption struct {
	Algorithm string `json:"algorithm"`
	// KeyID is the Key's ID.
	KeyID     string `json:"keyID"`
	ChunkSize int    `json:"chunkSize"`
}

// FileEntry is one file: its plaintext and its stored (encrypted) object.
type FileEntry struct {
	// Name is the file's path in the image folder, with '/' separators.
	Name         string `json:"name"`
	Size         int64  `json:"size"`
	SHA256       string `json:"sha256"`
	StoredSize   int64  `json:"storedSize"`
	StoredSHA256 string `json:"storedSHA256"`
}

// Size is the plaintext size of the image.
func (m Manifest) Size() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// StoredSize is what the image takes in a tier, its manifest aside.
func (m Manifest) StoredSize() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.StoredSize
	}
	return n
}

// ParseManifest reads a manifest and checks its structure: version, image id, algorithm,
// chunk size, and for every file a safe relative name (no duplicates, sorted), sizes that
// agree with the encryption and SHA-256 digests. It does not check the MAC (see
// Manifest.Verify).
func ParseManifest(data []byte) (Manifest, error) {
	if len(data) > maxManifestSize {
		return Manifest{}, fmt.Errorf("manifest: %d bytes, more than %d: %w", len(data), maxManifestSize, ErrCorrupt)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("manifest: %v: %w", err, ErrCorrupt)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Manifest{}, fmt.Errorf("manifest: data after the object: %w", ErrCorrupt)
	}
	if err := m.check(); err != nil {
		return Manifest{}, fmt.Errorf("manifest of %s: %v: %w", m.Image, err, ErrCorrupt)
	}
	return m, nil
}

func (m Manifest) check() error {
	if m.Version != ManifestVersion {
		return fmt.Errorf("format version %d, want %d", m.Version, ManifestVersion)
	}
	if err := m.Image.Validate(); err != nil {
		return err
	}
	e := m.Encryption
	if e.Algorithm != Algorithm {
		return fmt.Errorf("algorithm %q, want %q", e.Algorithm, Algorithm)
	}
	if e.ChunkSize < minChunkSize || e.ChunkSize > maxChunkSize {
		return fmt.Errorf("chunk size %d out of range [%d, %d]", e.ChunkSize, minChunkSize, maxChunkSize)
	}
	if !isHex(e.KeyID, 16) {
		return fmt.Errorf("key id %q is not 16 hex digits", e.KeyID)
	}
	if len(m.Files) == 0 || len(m.Files) > maxFiles {
		return fmt.Errorf("%d files, want 1 to %d", len(m.Files), maxFiles)
	}
	for i, f := range m.Files {
		if err := checkFileName(f.Name); err != nil {
			return err
		}
		if i > 0 && m.Files[i-1].Name >= f.Name {
			return fmt.Errorf("file %q: files not sorted or listed twice", f.Name)
		}
		if f.Size < 0 || f.Size > 1<<50 {
			return fmt.Errorf("file %q: size %d out of range", f.Name, f.Size)
		}
		if want := EncryptedSize(f.Size, e.ChunkSize); f.StoredSize != want {
			return fmt.Errorf("file %q: stored size %d, want %d for %d bytes", f.Name, f.StoredSize, want, f.Size)
		}
		if !isHex(f.SHA256, 64) || !isHex(f.StoredSHA256, 64) {
			return fmt.Errorf("file %q: a sha256 is not 64 lowercase hex digits", f.Name)
		}
	}
	return nil
}

// checkFileName accepts slash-separated relative paths that stay in the image folder.
func checkFileName(name string) error {
	if name == "" || len(name) > 1024 || path.Clean(name) != name || path.IsAbs(name) ||
		name == "." || name == ".." || strings.HasPrefix(name, "../") ||
		strings.ContainsAny(name, "\\\x00") {
		return fmt.Errorf("file name %q is not a clean relative path", name)
	}
	for _, part := range strings.Split(name, "/") {
		if strings.HasPrefix(part, ".") {
			return fmt.Errorf("file name %q: a part starts with '.'", name)
		}
	}
	return nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Verify checks that the manifest was written with key: the key's ID, then the MAC.
func (m Manifest) Verify(key Key) error {
	if key.IsZero() {
		return errors.New("no image key")
	}
	if m.Encryption.KeyID != key.ID() {
		return fmt.Errorf("image %s: encrypted with key %s, the namespace's key is %s: %w", m.Image, m.Encryption.KeyID, key.ID(), ErrWrongKey)
	}
	want, err := m.mac(key)
	if err != nil {
		return err
	}
	got, err := hex.DecodeString(m.MAC)
	if err != nil || !hmac.Equal(got, want) {
		return fmt.Errorf("image %s: manifest MAC does not match (the manifest was changed): %w", m.Image, ErrCorrupt)
	}
	return nil
}

// seal sets the MAC and returns the manifest's bytes.
func (m *Manifest) seal(key Key) ([]byte, error) {
	m.Encryption.KeyID = key.ID()
	sum, err := m.mac(key)
	if err != nil {
		return nil, err
	}
	m.MAC = hex.EncodeToString(sum)
	return json.MarshalIndent(m, "", "  ")
}

func (m Manifest) mac(key Key) ([]byte, error) {
	mk, err := key.derive(nil, manifestMACInfo, 32)
	if err != nil {
		return nil, err
	}
	m.MAC = ""
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	h := hmac.New(sha256.New, mk)
	h.Write(body)
	return h.Sum(nil), nil
}

func sha256Hex(h []byte) string { return hex.EncodeToString(h) }
