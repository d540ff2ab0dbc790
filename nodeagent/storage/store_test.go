package storage

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// writeImage makes an image folder: a few files, one in a subfolder, one of several chunks.
func writeImage(t *testing.T) (string, map[string][]byte) {
	t.Helper()
	dir := t.TempDir()
	files := map[string][]byte{
		"metadata.json":   []byte(`{"version":1}`),
		"pages-1.img":     make([]byte, 2*DefaultChunkSize+123),
		"empty.img":       nil,
		"sub/inventory.x": []byte("inventory"),
	}
	rand.Read(files["pages-1.img"])
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir, files
}

func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	got := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		data, err := os.ReadFile(p)
		got[filepath.ToSlash(rel)] = data
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func newDisk(t *testing.T) *Disk {
	t.Helper()
	d, err := NewDisk(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

var testID = ImageID{Namespace: "team-a", Name: "trainer-0-6f1c"}

func TestPutRestoreRoundTrip(t *testing.T) {
	ctx := t.Context()
	disk, key := newDisk(t), testKey(t, 1)
	src, files := writeImage(t)
	m, err := Put(ctx, disk, testID, key, src)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(m.Files), len(files); got != want {
		t.Errorf("manifest lists %d files, want %d", got, want)
	}
	// At rest the files are not in the clear.
	stored := readTree(t, disk.Root)
	if bytes.Contains(stored["team-a/trainer-0-6f1c/files/sub/inventory.x"], []byte("inventory")) {
		t.Error("a stored file holds its plaintext")
	}
	if _, err := Put(ctx, disk, testID, key, src); !errors.Is(err, ErrExists) {
		t.Errorf("second Put: %v, want ErrExists", err)
	}
	dst := filepath.Join(t.TempDir(), "restored")
	if _, err := Restore(ctx, disk, testID, key, dst); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(files, readTree(t, dst), cmp.Comparer(bytes.Equal)); diff != "" {
		t.Errorf("restored files (-want +got):\n%s", diff)
	}
	if _, err := Restore(ctx, disk, testID, key, dst); err == nil {
		t.Error("Restore into an existing folder succeeded")
	}
}

func TestImageWithoutManifestIsNotAnImage(t *testing.T) {
	ctx := t.Context()
	disk, key := newDisk(t), testKey(t, 1)
	src, _ := writeImage(t)
	if _, err := Put(ctx, disk, testID, key, src); err != nil {
		t.Fatal(err)
	}
	if err := disk.Delete(ctx, testID.manifestKey()); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "restored")
	if _, err := Restore(ctx, disk, testID, key, dst); !errors.Is(err, ErrNotFound) {
		t.Errorf("Restore without a manifest: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Errorf("destination exists after a refused restore: %v", err)
	}
	// The next Put overwrites what the interrupted one left.
	if _, err := Put(ctx, disk, testID, key, src); err != nil {
		t.Errorf("Put over an unfinished image: %v", err)
	}
}

// A tampered image is refused naming the file; the stored image stays and no folder appears.
func TestRestoreRefusesTamperedImage(t *testing.T) {
	key := testKey(t, 1)
	fileKey := testID.fileKey("pages-1.img")
	cases := map[string]struct {
		change  func(t *testing.T, d *Disk)
		wantErr error
		naming  string
	}{
		"byte changed": {change: func(t *testing.T, d *Disk) {
			modify(t, d, fileKey, func(b []byte) []byte { b[len(b)/2] ^= 1; return b })
		},
			wantErr: ErrCorrupt, naming: "pages-1.img"},
		"truncated": {change: func(t *testing.T, d *Disk) { modify(t, d, fileKey, func(b []byte) []byte { return b[:len(b)-100] }) },
			wantErr: ErrCorrupt, naming: "pages-1.img"},
		"cut at a chunk boundary": {change: func(t *testing.T, d *Disk) {
			modify(t, d, fileKey, func(b []byte) []byte { return b[:headerSize+2*(DefaultChunkSize+tagSize)] })
		}, wantErr: ErrCorrupt, naming: "pages-1.img"},
		"chunks reordered": {change: func(t *testing.T, d *Disk) {
			modify(t, d, fileKey, func(b []byte) []byte {
				seg := DefaultChunkSize + tagSize
				c0, c1 := bytes.Clone(b[headerSize:headerSize+seg]), bytes.Clone(b[headerSize+seg:headerSize+2*seg])
				copy(b[headerSize:], c1)
				copy(b[headerSize+seg:], c0)
				return b
			})
		}, wantErr: ErrCorrupt, naming: "pages-1.img"},
		"file missing": {change: func(t *testing.T, d *Disk) { os.Remove(filepath.Join(d.Root, filepath.FromSlash(fileKey))) },
			wantErr: ErrCorrupt, naming: "pages-1.img"},
		"files swapped": {change: func(t *testing.T, d *Disk) {
			a := filepath.Join(d.Root, filepath.FromSlash(testID.fileKey("metadata.json")))
			b := filepath.Join(d.Root, filepath.FromSlash(testID.fileKey("sub/inventory.x")))
			da, _ := os.ReadFile(a)
			db, _ := os.ReadFile(b)
			os.WriteFile(a, db, 0o600)
			os.WriteFile(b, da, 0o600)
		}, wantErr: ErrCorrupt, naming: "metadata.json"},
		"manifest changed": {change: func(t *testing.T, d *Disk) {
			modify(t, d, testID.manifestKey(), func(b []byte) []byte {
				return bytes.Replace(b, []byte(`"size": 9,`), []byte(`"size": 8,`), 1)
			})
		}, wantErr: ErrCorrupt, naming: "manifest"},
		"manifest garbage": {change: func(t *testing.T, d *Disk) {
			modify(t, d, testID.manifestKey(), func([]byte) []byte { return []byte("{") })
		},
			wantErr: ErrCorrupt, naming: "manifest"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			disk := newDisk(t)
			src, _ := writeImage(t)
			if _, err := Put(ctx, disk, testID, key, src); err != nil {
				t.Fatal(err)
			}
			tc.change(t, disk)
			before := readTree(t, disk.Root)
			dst := filepath.Join(t.TempDir(), "restored")
			_, err := Restore(ctx, disk, testID, key, dst)
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.naming) {
				t.Fatalf("Restore: %v; want %v naming %q", err, tc.wantErr, tc.naming)
			}
			if _, err := os.Stat(dst); !os.IsNotExist(err) {
				t.Errorf("destination exists after a refused restore: %v", err)
			}
			if diff := cmp.Diff(before, readTree(t, disk.Root), cmp.Comparer(bytes.Equal)); diff != "" {
				t.Errorf("the stored image changed (-before +after):\n%s", diff)
			}
			leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(dst), ".*partial*"))
			if len(leftovers) > 0 {
				t.Errorf("staging folders left: %v", leftovers)
			}
		})
	}
}

func modify(t *testing.T, d *Disk, key string, f func([]byte) []byte) {
	t.Helper()
	p := filepath.Join(d.Root, filepath.FromSlash(key))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, f(b), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestRestoreWithWrongKey(t *testing.T) {
	ctx := t.Context()
	disk := newDisk(t)
	src, _ := writeImage(t)
	if _, err := Put(ctx, disk, testID, testKey(t, 1), src); err != nil {
		t.Fatal(err)
	}
	_, err := Restore(ctx, disk, testID, testKey(t, 2), filepath.Join(t.TempDir(), "r"))
	if !errors.Is(err, ErrWrongKey) {
		t.Errorf("Restore with another key: %v, want ErrWrongKey", err)
	}
}

func TestCopyResumesAndVerifies(t *testing.T) {
	ctx := t.Context()
	from, to, key := newDisk(t), newDisk(t), testKey(t, 1)
	src, files := writeImage(t)
	m, err := Put(ctx, from, testID, key, src)
	if err != nil {
		t.Fatal(err)
	}
	// An interrupted copy: two files arrived, no manifest.
	for _, f := range m.Files[:2] {
		if err := copyObject(ctx, from, to, testID, f); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Stat(ctx, to, testID, key); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat of a half-copied image: %v, want ErrNotFound", err)
	}
	res, err := Copy(ctx, from, to, testID)
	if err != nil {
		t.Fatal(err)
	}
	if res.Skipped != 2 || res.Copied != len(m.Files)-2 {
		t.Errorf("Copy skipped %d and copied %d files, want 2 and %d", res.Skipped, res.Copied, len(m.Files)-2)
	}
	dst := filepath.Join(t.TempDir(), "restored")
	if _, err := Restore(ctx, to, testID, key, dst); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(files, readTree(t, dst), cmp.Comparer(bytes.Equal)); diff != "" {
		t.Errorf("restored files (-want +got):\n%s", diff)
	}
}

func TestCopyRefusesCorruptSource(t *testing.T) {
	ctx := t.Context()
	from, to, key := newDisk(t), newDisk(t), testKey(t, 1)
	src, _ := writeImage(t)
	if _, err := Put(ctx, from, testID, key, src); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func([]byte) []byte{
		"changed":   func(b []byte) []byte { b[100] ^= 1; return b },
		"truncated": func(b []byte) []byte { return b[:len(b)-1] },
	} {
		t.Run(name, func(t *testing.T) {
			modify(t, from, testID.fileKey("pages-1.img"), change)
			_, err := Copy(ctx, from, to, testID)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "pages-1.img") {
				t.Fatalf("Copy: %v, want ErrCorrupt naming pages-1.img", err)
			}
			if _, err := Stat(ctx, to, testID, key); !errors.Is(err, ErrNotFound) {
				t.Errorf("destination holds an image after a refused copy: %v", err)
			}
			if _, err := to.Stat(ctx, testID.fileKey("pages-1.img")); !errors.Is(err, ErrObjectNotFound) {
				t.Errorf("the corrupt object was left in the destination: %v", err)
			}
		})
	}
}

func TestDelete(t *testing.T) {
	ctx := t.Context()
	disk, key := newDisk(t), testKey(t, 1)
	src, _ := writeImage(t)
	other := ImageID{Namespace: "team-a", Name: "other"}
	for _, id := range []ImageID{testID, other} {
		if _, err := Put(ctx, disk, id, key, src); err != nil {
			t.Fatal(err)
		}
	}
	if err := Delete(ctx, disk, testID); err != nil {
		t.Fatal(err)
	}
	if _, err := Stat(ctx, disk, testID, key); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat after Delete: %v", err)
	}
	if keys, _ := disk.List(ctx, testID.prefix()); len(keys) != 0 {
		t.Errorf("objects left: %v", keys)
	}
	if _, err := Stat(ctx, disk, other, key); err != nil {
		t.Errorf("Delete removed another image: %v", err)
	}
}

func TestImageIDValidate(t *testing.T) {
	for _, id := range []ImageID{{"", "a"}, {"a", ""}, {"A", "a"}, {"a", "../x"}, {"a", "x/y"}, {"a", "a..b"}, {"a/b", "c"}, {"a", ".x"}} {
		if err := id.Validate(); err == nil {
			t.Errorf("%q accepted", id)
		}
	}
	if err := testID.Validate(); err != nil {
		t.Error(err)
	}
}

// A damaged image stays for inspection: Put and Copy do not overwrite it.
func TestDamagedImageIsNotOverwritten(t *testing.T) {
	ctx := t.Context()
	disk, other, key := newDisk(t), newDisk(t), testKey(t, 1)
	src, _ := writeImage(t)
	for _, d := range []*Disk{disk, other} {
		if _, err := Put(ctx, d, testID, key, src); err != nil {
			t.Fatal(err)
		}
	}
	modify(t, disk, testID.manifestKey(), func(b []byte) []byte { return b[:len(b)/2] })
	before := readTree(t, disk.Root)
	if _, err := Put(ctx, disk, testID, key, src); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Put over a damaged image: %v, want ErrCorrupt", err)
	}
	if _, err := Copy(ctx, other, disk, testID); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Copy over a damaged image: %v, want ErrCorrupt", err)
	}
	if diff := cmp.Diff(before, readTree(t, disk.Root), cmp.Comparer(bytes.Equal)); diff != "" {
		t.Errorf("the damaged image changed (-before +after):\n%s", diff)
	}
}

// Delete also removes what a Put that crashed left: objects and temporary files.
func TestDeleteRemovesLeftovers(t *testing.T) {
	ctx := t.Context()
	disk := newDisk(t)
	dir := filepath.Join(disk.Root, "team-a", testID.Name, "files")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pages-1.img", ".tmp-pages-2.img-123"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := Delete(ctx, disk, testID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(disk.Root, "team-a")); !os.IsNotExist(err) {
		t.Errorf("left after Delete: %v (%v)", readTree(t, disk.Root), err)
	}
}

func TestListImages(t *testing.T) {
	ctx := t.Context()
	disk, key := newDisk(t), testKey(t, 1)
	if ids, err := ListImages(ctx, disk); err != nil || len(ids) != 0 {
		t.Fatalf("empty tier: %v, %v", ids, err)
	}
	src, _ := writeImage(t)
	other := ImageID{Namespace: "team-b", Name: "b-1"}
	for _, id := range []ImageID{testID, other} {
		if _, err := Put(ctx, disk, id, key, src); err != nil {
			t.Fatal(err)
		}
	}
	// An unfinished Put (files, no manifest) is listed; objects that are no image are not.
	partial := ImageID{Namespace: "team-a", Name: "partial"}
	for _, k := range []string{partial.fileKey("pages-1.img"), "README", "team-a/loose", "Team-C/x/manifest.json"} {
		if err := disk.Put(ctx, k, strings.NewReader("x"), 1, ""); err != nil {
			t.Fatal(err)
		}
	}
	ids, err := ListImages(ctx, disk)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]ImageID{partial, testID, other}, ids); diff != "" {
		t.Errorf("ListImages (-want +got):\n%s", diff)
	}
}
