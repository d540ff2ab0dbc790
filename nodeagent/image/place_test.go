package image

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testRoot = "/var/lib/kybernate/images"

func TestCheckPath(t *testing.T) {
	tests := []struct {
		name, root, ns, ref string
		// want is the Reason of the refusal; "" accepts.
		want string
	}{
		{name: "image of the pod's namespace", root: testRoot, ns: "ml", ref: testRoot + "/ml/train-1234"},
		{name: "deeper folder in the namespace", root: testRoot, ns: "ml", ref: testRoot + "/ml/a/b"},
		{name: "no checkpoint folder", root: "", ns: "ml", ref: testRoot + "/ml/train", want: RefusedNoCheckpointDir},
		{name: "relative checkpoint folder", root: "images", ns: "ml", ref: "images/ml/train", want: RefusedNoCheckpointDir},
		{name: "empty", root: testRoot, ns: "ml", ref: "", want: RefusedInvalidPath},
		{name: "relative", root: testRoot, ns: "ml", ref: "ml/train", want: RefusedInvalidPath},
		{name: "dot dot back into the namespace", root: testRoot, ns: "ml", ref: testRoot + "/ml/../ml/train", want: RefusedInvalidPath},
		{name: "dot dot out of the folder", root: testRoot, ns: "ml", ref: testRoot + "/ml/../../../etc", want: RefusedInvalidPath},
		{name: "dot dot at the end", root: testRoot, ns: "ml", ref: testRoot + "/ml/train/..", want: RefusedInvalidPath},
		{name: "double slash", root: testRoot, ns: "ml", ref: testRoot + "/ml//train", want: RefusedInvalidPath},
		{name: "trailing slash", root: testRoot, ns: "ml", ref: testRoot + "/ml/train/", want: RefusedInvalidPath},
		{name: "dot", root: testRoot, ns: "ml", ref: testRoot + "/ml/./train", want: RefusedInvalidPath},
		{name: "NUL", root: testRoot, ns: "ml", ref: testRoot + "/ml/tr\x00ain", want: RefusedInvalidPath},
		{name: "absolute path elsewhere", root: testRoot, ns: "ml", ref: "/etc", want: RefusedOutside},
		{name: "host root", root: testRoot, ns: "ml", ref: "/", want: RefusedOutside},
		{name: "sibling with the folder's name as prefix", root: testRoot, ns: "ml", ref: testRoot + "-old/ml/train", want: RefusedOutside},
		{name: "the checkpoint folder itself", root: testRoot, ns: "ml", ref: testRoot, want: RefusedOutside},
		{name: "parent of the checkpoint folder", root: testRoot, ns: "ml", ref: "/var/lib/kybernate", want: RefusedOutside},
		{name: "image of another namespace", root: testRoot, ns: "ml", ref: testRoot + "/other/train-1234", want: RefusedOtherNamespace},
		{name: "namespace that is a prefix", root: testRoot, ns: "ml", ref: testRoot + "/ml-prod/train", want: RefusedOtherNamespace},
		{name: "file next to the namespace folders", root: testRoot, ns: "ml", ref: testRoot + "/train", want: RefusedOtherNamespace},
		{name: "the namespace folder", root: testRoot, ns: "ml", ref: testRoot + "/ml", want: RefusedInvalidPath},
		{name: "namespace that is not a name", root: testRoot, ns: "..", ref: testRoot + "/../x", want: RefusedInvalidPath},
		{name: "no namespace", root: testRoot, ns: "", ref: testRoot + "/ml/train", want: RefusedInvalidPath},
		{name: "checkpoint folder at /", root: "/", ns: "ml", ref: "/ml/train"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckPath(tt.root, tt.ns, tt.ref)
			if got := reason(err); got != tt.want {
				t.Fatalf("CheckPath(%q, %q, %q) = %v; want reason %q", tt.root, tt.ns, tt.ref, err, tt.want)
			}
			if err != nil && !strings.Contains(err.Error(), tt.want) {
				t.Errorf("message %q does not name the reason", err)
			}
		})
	}
}

func reason(err error) string {
	if err == nil {
		return ""
	}
	var re *RefusedError
	if !errors.As(err, &re) {
		return "not a RefusedError: " + err.Error()
	}
	return re.Reason
}

// tree is a checkpoint folder with namespaces ml and other, and links that lead out of ml.
func tree(t testing.TB) (root string) {
	t.Helper()
	base := t.TempDir()
	root = filepath.Join(base, "images")
	for _, d := range []string{"ml/good", "ml/deep/img", "other/img", "../outside/img"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{
		"ml/to-other":    "../other/img",
		"ml/to-outside":  filepath.Join(base, "outside", "img"),
		"ml/deep/up":     "..",
		"ml/inner-link":  "good",
		"linked-ns":      "other",
		"ml/file":        "",
		"ml/deep/escape": filepath.Join(base, "outside"),
	} {
		p := filepath.Join(root, link)
		if target == "" {
			if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestResolveRestore(t *testing.T) {
	root := tree(t)
	tests := []struct {
		name, ns, rel string
		want          string // reason; "missing" for ErrMissing; "" accepts
	}{
		{name: "image", ns: "ml", rel: "ml/good"},
		{name: "deeper image", ns: "ml", rel: "ml/deep/img"},
		{name: "link into another namespace", ns: "ml", rel: "ml/to-other", want: RefusedSymlink},
		{name: "link out of the checkpoint folder", ns: "ml", rel: "ml/to-outside", want: RefusedSymlink},
		{name: "link within the namespace", ns: "ml", rel: "ml/inner-link", want: RefusedSymlink},
		{name: "path through a link", ns: "ml", rel: "ml/deep/escape/img", want: RefusedSymlink},
		{name: "path through a link to the parent", ns: "ml", rel: "ml/deep/up/good", want: RefusedSymlink},
		{name: "namespace folder that is a link", ns: "linked-ns", rel: "linked-ns/img", want: RefusedSymlink},
		{name: "a file", ns: "ml", rel: "ml/file", want: RefusedInvalidPath},
		{name: "missing image", ns: "ml", rel: "ml/gone", want: "missing"},
		{name: "missing namespace folder", ns: "new", rel: "new/img", want: "missing"},
		{name: "image of another namespace", ns: "ml", rel: "other/img", want: RefusedOtherNamespace},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ref := filepath.Join(root, tt.rel)
			got, err := ResolveRestore(root, tt.ns, ref)
			r := reason(err)
			if errors.Is(err, ErrMissing) {
				r = "missing"
			}
			if r != tt.want {
				t.Fatalf("ResolveRestore(%s) = %q, %v; want %q", tt.rel, got, err, tt.want)
			}
			if err == nil && got != ref {
				t.Errorf("got %q, want %q", got, ref)
			}
		})
	}
}

func TestNamespaceDir(t *testing.T) {
	root := filepath.Join(t.TempDir(), "images")
	dir, err := NamespaceDir(root, "ml")
	if err != nil {
		t.Fatal(err)
	}
	if dir != filepath.Join(root, "ml") {
		t.Errorf("dir %s", dir)
	}
	for _, p := range []string{root, dir} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != DirMode {
			t.Errorf("%s: %v, %v; want mode %v", p, st.Mode(), err, DirMode)
		}
	}
	// A folder an older agent made 0755 becomes private.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := NamespaceDir(root, "ml"); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != DirMode {
		t.Errorf("mode %v after a second call, want %v", st.Mode(), DirMode)
	}
	// A link in place of the folder is refused, not followed.
	if err := os.Symlink(t.TempDir(), filepath.Join(root, "linked")); err != nil {
		t.Fatal(err)
	}
	if _, err := NamespaceDir(root, "linked"); err == nil || !strings.Contains(err.Error(), "not a folder") {
		t.Errorf("namespace folder that is a link: %v", err)
	}
	if _, err := NamespaceDir(root, "../x"); err == nil {
		t.Error("namespace ../x accepted")
	}
}

func TestWriteMakesImagePrivate(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"pages-1.img", "sub/descriptors.json"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Write(dir, Metadata{Container: Container{ID: "c"}}); err != nil {
		t.Fatal(err)
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		want := FileMode
		if d.IsDir() {
			want = DirMode
		}
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, st.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
