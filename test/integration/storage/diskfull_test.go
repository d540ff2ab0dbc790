package storage

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kybernate/kybernate/nodeagent/storage"
	"github.com/kybernate/kybernate/test/ci"
)

// A spill onto a disk that fills up fails with the cause, leaves no image (no manifest), and
// Delete removes what it wrote; the source folder is untouched. The disk is a 4 MiB tmpfs
// (root only), the image 10 MiB.
func TestSpillOntoFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		ci.Skip(t, "mounting a small tmpfs needs root (CI runs as root)")
	}
	ctx := t.Context()
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	disk, err := storage.NewDisk(filepath.Join(mnt, "images"))
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	files := writeImage(t, src)

	_, err = storage.Put(ctx, disk, id, key(t), src)
	if err == nil || !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), bigFile) {
		t.Fatalf("Put onto a full disk: %v; want ENOSPC naming %s", err, bigFile)
	}
	t.Logf("spill refused: %v", err)
	if _, err := storage.Stat(ctx, disk, id, key(t)); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat after the failed spill: %v; want ErrNotFound", err)
	}
	if err := storage.Delete(ctx, disk, id); err != nil {
		t.Fatal(err)
	}
	left, err := filepath.Glob(filepath.Join(disk.Root, "*"))
	if err != nil || len(left) != 0 {
		t.Errorf("left on the disk after Delete: %v %v", left, err)
	}
	if diff := readTree(t, src); len(diff) != len(files) {
		t.Errorf("the source folder changed: %d files, want %d", len(diff), len(files))
	}
}
