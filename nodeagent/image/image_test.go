package image

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// newImage writes a small CRIU-like image with metadata.json.
func newImage(t *testing.T) (string, Metadata) {
	t.Helper()
	dir := t.TempDir()
	for name, content := range map[string]string{"inventory.img": "inv", "pages-1.img": strings.Repeat("p", 5000), "sub/descriptors.json": "[]"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m, err := Write(dir, Metadata{Pod: Pod{Namespace: "ml", Name: "train", UID: "u"}, Container: Container{ID: "c1"},
		Created: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	return dir, m
}

func TestWriteVerify(t *testing.T) {
	dir, m := newImage(t)
	want := []File{
		{Name: "inventory.img", Size: 3},
		{Name: "pages-1.img", Size: 5000},
		{Name: "sub/descriptors.json", Size: 2},
	}
	ignoreSum := cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".SHA256" }, cmp.Ignore())
	if diff := cmp.Diff(want, m.Files, ignoreSum); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}
	got, err := Verify(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(m, got); diff != "" {
		t.Errorf("verified metadata (-written +read):\n%s", diff)
	}
	// A file the metadata does not list (a restore's log) is fine.
	if err := os.WriteFile(filepath.Join(dir, "restore.log"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(dir); err != nil {
		t.Errorf("with an extra file: %v", err)
	}
	if _, err := Write(t.TempDir(), Metadata{}); err == nil {
		t.Error("Write of an empty image: no error")
	}
}

// TestVerifyRefuses damages an image and runs Verify and Check on it: Check refuses all that
// Verify does but a changed byte (it reads no file's contents).
func TestVerifyRefuses(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, dir string)
		wantErr error
		wantMsg string
		// checkPasses: Check does not see this damage.
		checkPasses bool
	}{
		{name: "missing folder", damage: func(t *testing.T, dir string) { must(t, os.RemoveAll(dir)) }, wantErr: ErrMissing, wantMsg: "no such folder"},
		{name: "no metadata", damage: func(t *testing.T, dir string) { must(t, os.Remove(filepath.Join(dir, MetadataFile))) }, wantErr: ErrMissing, wantMsg: "has no metadata.json"},
		{name: "missing file", damage: func(t *testing.T, dir string) { must(t, os.Remove(filepath.Join(dir, "pages-1.img"))) }, wantErr: ErrCorrupt, wantMsg: "pages-1.img"},
		{name: "truncated", damage: func(t *testing.T, dir string) { must(t, os.Truncate(filepath.Join(dir, "pages-1.img"), 10)) }, wantErr: ErrCorrupt, wantMsg: "has 10 bytes, metadata says 5000"},
		{name: "flipped byte", damage: func(t *testing.T, dir string) {
			must(t, os.WriteFile(filepath.Join(dir, "pages-1.img"), []byte(strings.Repeat("p", 4999)+"q"), 0o600))
		}, wantErr: ErrCorrupt, wantMsg: "pages-1.img has sha256", checkPasses: true},
		{name: "garbage metadata", damage: func(t *testing.T, dir string) {
			must(t, os.WriteFile(filepath.Join(dir, MetadataFile), []byte("{"), 0o600))
		}, wantErr: ErrCorrupt, wantMsg: "metadata.json"},
		{name: "other version", damage: func(t *testing.T, dir string) { rewrite(t, dir, func(m *Metadata) { m.Version = 2 }) }, wantErr: ErrCorrupt, wantMsg: "format version 2"},
		{name: "path outside", damage: func(t *testing.T, dir string) {
			rewrite(t, dir, func(m *Metadata) { m.Files[0].Name = "../etc/passwd" })
		}, wantErr: ErrCorrupt, wantMsg: "leaves the image"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, _ := newImage(t)
			tt.damage(t, dir)
			_, err := Verify(dir)
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Verify: error %v, want %v containing %q", err, tt.wantErr, tt.wantMsg)
			}
			m, err := Check(dir)
			switch {
			case tt.checkPasses && (err != nil || len(m.Files) == 0):
				t.Errorf("Check: %v, %d files; want the metadata and no error", err, len(m.Files))
			case !tt.checkPasses && (!errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg)):
				t.Errorf("Check: error %v, want %v containing %q", err, tt.wantErr, tt.wantMsg)
			}
		})
	}
	for _, f := range []func(string) (Metadata, error){Verify, Check} {
		if _, err := f("relative/image"); err == nil || !strings.Contains(err.Error(), "want an absolute path") {
			t.Errorf("relative path: %v", err)
		}
	}
}

func rewrite(t *testing.T, dir string, change func(*Metadata)) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, MetadataFile))
	must(t, err)
	var m Metadata
	must(t, json.Unmarshal(data, &m))
	change(&m)
	data, err = json.Marshal(m)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, MetadataFile), data, 0o600))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
