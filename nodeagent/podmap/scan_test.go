package podmap

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPIDsByPod(t *testing.T) {
	root := procRoot(t, map[int32]string{
		100: "v2-systemd-containerd-burstable",
		200: "v1-cgroupfs-containerd-guaranteed",
		300: "v2-host-process",
		600: "malformed",
	})
	// Not processes: files and folders that are not PIDs.
	if err := os.WriteFile(filepath.Join(root, "meminfo"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := (&Resolver{ProcRoot: root}).PIDsByPod(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{100, 200}, got[uid]); diff != "" {
		t.Errorf("pids of the pod (-want +got):\n%s", diff)
	}
	for u, pids := range got {
		if slices.Contains(pids, 300) || slices.Contains(pids, 600) {
			t.Errorf("pod %s has a host process or an unreadable one: %v", u, pids)
		}
	}
	if _, err := (&Resolver{ProcRoot: filepath.Join(root, "nope")}).PIDsByPod(t.Context()); err == nil {
		t.Error("no error for a missing /proc")
	}
}
