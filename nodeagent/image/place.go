package image

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Where images live. A node agent's checkpoint folder (its --checkpoint-dir, the shim's
// checkpointDir) holds one folder per namespace, <root>/<namespace>, mode 0700, and in it the
// image folders of that namespace's pods (mode 0700, files 0600). A pod restores only from an
// image of its own namespace under the configured folder: kybernate.io/restore-from is input a
// pod's author can write, and the shim and the agent read what it names as root.
const (
	// DirMode is the mode of the namespace folders and of every folder of an image.
	DirMode fs.FileMode = 0o700
	// FileMode is the mode of every file of an image.
	FileMode fs.FileMode = 0o600
)

// Reasons a restore-from path is refused (RefusedError.Reason); the Events of refusals carry
// them.
const (
	RefusedNoCheckpointDir = "NoCheckpointDir"
	RefusedInvalidPath     = "InvalidImagePath"
	RefusedOutside         = "OutsideCheckpointDir"
	RefusedOtherNamespace  = "OtherNamespace"
	RefusedSymlink         = "SymlinkInImagePath"
)

// RefusedError is a restore-from path that names no image the pod may restore from.
type RefusedError struct {
	// Reason is one of the Refused* constants.
	Reason string
	// Path is the refused path as given.
	Path string
	msg  string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("image path %q refused (%s): %s", e.Path, e.Reason, e.msg)
}

func refused(reason, path, format string, args ...any) error {
	return &RefusedError{Reason: reason, Path: path, msg: fmt.Sprintf(format, args...)}
}

// CheckPath checks, without touching a file, that ref is the path of an image of namespace ns
// under root: absolute, clean (no "..", ".", "//" or trailing "/"), and of the form
// root/ns/<name>[/...]. The errors are *RefusedError.
func CheckPath(root, ns, ref string) error {
	if root == "" {
		return refused(RefusedNoCheckpointDir, ref, "no checkpoint folder is configured: restores from images are off")
	}
	if !filepath.IsAbs(root) || filepath.Clean(root) != root {
		return refused(RefusedNoCheckpointDir, ref, "the configured checkpoint folder %q is not a clean absolute path", root)
	}
	switch {
	case ref == "":
		return refused(RefusedInvalidPath, ref, "empty")
	case strings.ContainsRune(ref, 0):
		return refused(RefusedInvalidPath, ref, "holds a NUL byte")
	case !filepath.IsAbs(ref):
		return refused(RefusedInvalidPath, ref, "want an absolute path")
	case hasDotDot(ref):
		return refused(RefusedInvalidPath, ref, `".." is not allowed in an image path`)
	case filepath.Clean(ref) != ref:
		return refused(RefusedInvalidPath, ref, "not a clean path (want %q)", filepath.Clean(ref))
	}
	if ns == "" {
		return refused(RefusedInvalidPath, ref, "the pod's namespace is not known")
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return refused(RefusedInvalidPath, ref, "pod namespace %q: %s", ns, strings.Join(errs, "; "))
	}
	rel, err := filepath.Rel(root, ref)
	if err != nil || rel == "." || !filepath.IsLocal(rel) {
		return refused(RefusedOutside, ref, "not under the checkpoint folder %s", root)
	}
	first, rest, _ := strings.Cut(filepath.ToSlash(rel), "/")
	if first != ns {
		return refused(RefusedOtherNamespace, ref, "an image of namespace %q; the pod is in namespace %q and restores only from %s", first, ns, filepath.Join(root, ns))
	}
	if rest == "" {
		return refused(RefusedInvalidPath, ref, "the folder of namespace %q, not an image in it", ns)
	}
	return nil
}

func hasDotDot(p string) bool {
	for _, part := range strings.Split(filepath.ToSlash(p), "/") {
		if part == ".." {
			return true
		}
	}
	return false
}

// ResolveRestore checks ref as CheckPath does and that no folder or file from the namespace
// folder down to the image is a symbolic link (a link could lead out of the checkpoint folder
// or into another namespace's folder); root itself may be one. A path that does not exist is
// ErrMissing. It returns ref.
func ResolveRestore(root, ns, ref string) (string, error) {
	if err := CheckPath(root, ns, ref); err != nil {
		return "", err
	}
	rel, _ := filepath.Rel(root, ref)
	p := root
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		p = filepath.Join(p, part)
		st, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("image %s: no such folder (%s is missing): %w", ref, p, ErrMissing)
		}
		if err != nil {
			return "", fmt.Errorf("image %s: %w", ref, err)
		}
		if st.Mode()&fs.ModeSymlink != 0 {
			return "", refused(RefusedSymlink, ref, "%s is a symbolic link", p)
		}
		if !st.IsDir() {
			return "", refused(RefusedInvalidPath, ref, "%s is not a folder", p)
		}
	}
	return ref, nil
}

// NamespaceDir returns the folder of namespace ns under root and makes sure it is a private
// folder (mode DirMode, no symbolic link): created when missing (root too, with DirMode),
// its mode corrected when an older agent left it wider.
func NamespaceDir(root, ns string) (string, error) {
	if !filepath.IsAbs(root) || filepath.Clean(root) != root {
		return "", fmt.Errorf("checkpoint folder %q: want a clean absolute path", root)
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return "", fmt.Errorf("namespace %q: %s", ns, strings.Join(errs, "; "))
	}
	if err := os.MkdirAll(root, DirMode); err != nil {
		return "", fmt.Errorf("creating checkpoint folder: %w", err)
	}
	dir := filepath.Join(root, ns)
	if err := os.Mkdir(dir, DirMode); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("creating the folder of namespace %s: %w", ns, err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return "", fmt.Errorf("the folder of namespace %s: %w", ns, err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("the folder of namespace %s, %s, is not a folder (%s)", ns, dir, st.Mode().Type())
	}
	if st.Mode().Perm() != DirMode {
		if err := os.Chmod(dir, DirMode); err != nil {
			return "", fmt.Errorf("making the folder of namespace %s private: %w", ns, err)
		}
	}
	return dir, nil
}

// private gives every folder of the image dir (dir included) DirMode and every file FileMode,
// whatever CRIU and runc created them with.
func private(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := FileMode
		if d.IsDir() {
			mode = DirMode
		} else if !d.Type().IsRegular() {
			return nil // checksums refuses it
		}
		if err := os.Chmod(p, mode); err != nil {
			return fmt.Errorf("image %s: %w", dir, err)
		}
		return nil
	})
}
