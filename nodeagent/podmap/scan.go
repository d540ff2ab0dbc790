package podmap

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"k8s.io/apimachinery/pkg/types"
)

// PIDsByPod lists every process of the node that runs in a pod, by the pod's UID (from its
// cgroup path; from containerd for containers whose path names no pod), in PID order. It reads
// all of /proc: the agent uses it once at start to find the processes of suspended pods, which
// NVML no longer lists. Processes that end meanwhile or are in no pod are left out; so are the
// processes of pods no lookup knows, unless their cgroup path names the pod.
func (r *Resolver) PIDsByPod(ctx context.Context) (map[types.UID][]int, error) {
	root := r.ProcRoot
	if root == "" {
		root = "/proc"
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	out := map[types.UID][]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		uid, ok := r.podUIDOf(ctx, filepath.Join(root, e.Name(), "cgroup"))
		if ok {
			out[uid] = append(out[uid], pid)
		}
	}
	for uid := range out {
		slices.Sort(out[uid])
	}
	return out, nil
}

func (r *Resolver) podUIDOf(ctx context.Context, path string) (types.UID, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	c, err := ParseCgroupFile(f)
	if err != nil {
		return "", false
	}
	if c.PodUID != "" {
		return c.PodUID, true
	}
	if r.Containers != nil && c.ID != "" {
		if p, err := r.Containers.PodOfContainer(ctx, c.ID); err == nil {
			return p.UID, true
		}
	}
	return "", false
}
