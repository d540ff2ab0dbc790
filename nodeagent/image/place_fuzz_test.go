package image

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzCheckPath: whatever the namespace and path, an accepted path lies in the namespace's
// folder under the checkpoint folder, is clean and has no "..". Seeds in
// testdata/fuzz/FuzzCheckPath.
func FuzzCheckPath(f *testing.F) {
	for _, s := range [][2]string{
		{"ml", testRoot + "/ml/train-1"},
		{"ml", testRoot + "/ml/../other/x"},
		{"ml", testRoot + "/other/x"},
		{"ml", "/etc/passwd"},
		{"ml", testRoot + "//ml/x"},
		{"", testRoot + "/x"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, ns, ref string) {
		err := CheckPath(testRoot, ns, ref)
		if err == nil {
			prefix := testRoot + "/" + ns + "/"
			if !strings.HasPrefix(ref, prefix) || len(ref) == len(prefix) {
				t.Fatalf("accepted %q for namespace %q: not in %s", ref, ns, prefix)
			}
			if filepath.Clean(ref) != ref || hasDotDot(ref) {
				t.Fatalf("accepted %q: not clean", ref)
			}
			return
		}
		var re *RefusedError
		if !errors.As(err, &re) || re.Reason == "" {
			t.Fatalf("refusal %v is not a RefusedError with a reason", err)
		}
	})
}

// FuzzResolveRestore resolves paths (absolute, or relative to a checkpoint folder with links
// that lead out of namespace ml) and requires every accepted one to stay in ml's folder once
// links are followed. Seeds in testdata/fuzz/FuzzResolveRestore.
func FuzzResolveRestore(f *testing.F) {
	for _, s := range []string{"ml/good", "ml/to-other", "ml/deep/up/good", "ml/deep/escape/img", "linked-ns/img", "other/img", "ml/../other/img", "/etc"} {
		f.Add(s)
	}
	root := tree(f)
	realRoot, err := filepath.EvalSymlinks(root)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in string) {
		ref := in
		if !strings.HasPrefix(in, "/") {
			ref = root + "/" + in
		}
		got, err := ResolveRestore(root, "ml", ref)
		if err != nil {
			return
		}
		real, err := filepath.EvalSymlinks(got)
		if err != nil {
			t.Fatalf("accepted %q, which does not resolve: %v", in, err)
		}
		if !strings.HasPrefix(real, filepath.Join(realRoot, "ml")+"/") {
			t.Fatalf("accepted %q, which resolves to %s outside %s", in, real, filepath.Join(realRoot, "ml"))
		}
	})
}
