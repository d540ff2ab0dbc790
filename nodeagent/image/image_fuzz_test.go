package image

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// fuzzInventory is the content of inventory.img in the fuzzed images.
const fuzzInventory = "inv"

// metadata.json is read from image folders that anyone with access to the image store may
// have written: Verify returns a valid image or an error wrapping ErrCorrupt, never panics,
// and never accepts a file outside the folder or one whose checksum differs.
func FuzzVerify(f *testing.F) {
	sum := sha256.Sum256([]byte(fuzzInventory))
	valid := `{"version":1,"pod":{"namespace":"ml","name":"train"},"container":{"id":"c1"},"gpus":["GPU-aaaaaaaa-0000-0000-0000-000000000001"],` +
		`"files":[{"name":"inventory.img","size":3,"sha256":"` + hex.EncodeToString(sum[:]) + `"}]}`
	f.Add([]byte(valid), []byte("pages"))
	f.Add([]byte(`{"version":1,"files":[{"name":"../inventory.img","size":3,"sha256":""}]}`), []byte(""))
	f.Add([]byte(`{"version":2,"files":[]}`), []byte("x"))
	f.Add([]byte(`{"version":1,"files":[{"name":"pages-1.img","size":-1}]}`), []byte("x"))
	f.Fuzz(func(t *testing.T, metadata, pages []byte) {
		dir := t.TempDir()
		for name, data := range map[string][]byte{"inventory.img": []byte(fuzzInventory), "pages-1.img": pages, MetadataFile: metadata} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		m, err := Verify(dir)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("Verify: %v, want an error wrapping ErrCorrupt", err)
			}
			return
		}
		if m.Version != Version || len(m.Files) == 0 {
			t.Errorf("Verify accepted version %d with %d files", m.Version, len(m.Files))
		}
		for _, file := range m.Files {
			if !filepath.IsLocal(file.Name) {
				t.Errorf("Verify accepted %q, outside the image", file.Name)
				continue
			}
			data, err := os.ReadFile(filepath.Join(dir, file.Name))
			if err != nil {
				t.Errorf("Verify accepted %q: %v", file.Name, err)
				continue
			}
			if got := sha256.Sum256(data); hex.EncodeToString(got[:]) != file.SHA256 || int64(len(data)) != file.Size {
				t.Errorf("Verify accepted %q with another size or checksum", file.Name)
			}
		}
	})
}
