package storage

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
)

// KeySize is the size of a namespace's key: 32 bytes, for AES-256.
const KeySize = 32

// Key is a namespace's image key. Its bytes never leave the package: String, GoString and
// Format print [redacted], so a key passed to a logger by mistake shows nothing.
type Key struct {
	b  []byte
	id string
}

// ParseKey reads a key as a Secret holds it: 32 raw bytes, or their standard base64 or hex
// encoding (surrounding whitespace ignored).
func ParseKey(data []byte) (Key, error) {
	if len(data) == KeySize {
		return newKey(data), nil
	}
	s := strings.TrimSpace(string(data))
	if b, err := base64.StdEncoding.DecodeString(s); err == nil && len(b) == KeySize {
		return newKey(b), nil
	}
	if b, err := hex.DecodeString(s); err == nil && len(b) == KeySize {
		return newKey(b), nil
	}
	return Key{}, fmt.Errorf("image key: want %d bytes (raw, base64 or hex), got %d bytes of something else", KeySize, len(data))
}

func newKey(b []byte) Key {
	k := Key{b: append([]byte(nil), b...)}
	// The id names the key in manifests and errors without revealing it.
	idKey, err := hkdf.Key(sha256.New, k.b, nil, "kybernate image key id", 8)
	if err != nil {
		panic(err) // only for lengths HKDF cannot produce
	}
	k.id = hex.EncodeToString(idKey)
	return k
}

// ID is a public fingerprint of the key (16 hex digits), recorded in manifests so that a
// restore with another key fails with a clear error.
func (k Key) ID() string { return k.id }

// IsZero reports whether k holds no key.
func (k Key) IsZero() bool { return len(k.b) == 0 }

func (k Key) String() string   { return "[redacted]" }
func (k Key) GoString() string { return "storage.Key{[redacted]}" }

// Format keeps %x, %v and the rest from printing the key.
func (k Key) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte("[redacted]")) }

// derive returns a subkey of k for one purpose.
func (k Key) derive(salt []byte, info string, n int) ([]byte, error) {
	if k.IsZero() {
		return nil, fmt.Errorf("no image key")
	}
	return hkdf.Key(sha256.New, k.b, salt, info, n)
}
