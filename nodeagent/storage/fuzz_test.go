package storage

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fuzzKey is the key of the committed decryptor corpus (testdata/fuzz/FuzzDecrypt).
func fuzzKey(t testing.TB) Key { return testKey(t, 0x5a) }

const fuzzPlace = "team-a/img\x00pages-1.img"

// FuzzParseManifest: the parser never panics, and what it accepts is a manifest that passes
// its own checks and survives a round trip.
func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"version":1,"files":[{"name":"../x"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		if err := m.check(); err != nil {
			t.Fatalf("accepted manifest fails its checks: %v", err)
		}
		for _, file := range m.Files {
			if checkFileName(file.Name) != nil {
				t.Fatalf("accepted unsafe file name %q", file.Name)
			}
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := ParseManifest(again)
		if err != nil {
			t.Fatalf("re-encoded manifest refused: %v", err)
		}
		if diff := cmp.Diff(m, m2); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}

// FuzzDecrypt: the decryptor never panics, fails only with ErrAuthentication, and what it
// accepts has exactly the size of the encryption of its plaintext.
func FuzzDecrypt(f *testing.F) {
	key := fuzzKey(f)
	f.Add(encrypt(f, key, fuzzPlace, minChunkSize, []byte("hello, world: two chunks")))
	f.Add([]byte(magic))
	f.Fuzz(func(t *testing.T, ct []byte) {
		dec, err := NewDecrypter(bytes.NewReader(ct), key, fuzzPlace)
		if err != nil {
			if !errors.Is(err, ErrAuthentication) {
				t.Fatalf("NewDecrypter: %v does not wrap ErrAuthentication", err)
			}
			return
		}
		plain, err := io.ReadAll(dec)
		if err != nil {
			if !errors.Is(err, ErrAuthentication) {
				t.Fatalf("Read: %v does not wrap ErrAuthentication", err)
			}
			return
		}
		chunk := int(uint32(ct[len(magic)])<<24 | uint32(ct[len(magic)+1])<<16 | uint32(ct[len(magic)+2])<<8 | uint32(ct[len(magic)+3]))
		if got, want := int64(len(ct)), EncryptedSize(int64(len(plain)), chunk); got != want {
			t.Fatalf("accepted %d bytes of ciphertext for %d of plaintext, want %d", got, len(plain), want)
		}
	})
}
