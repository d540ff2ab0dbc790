// Package podmap maps a process on the node to the Kubernetes pod it runs in: PID ->
// /proc/PID/cgroup -> container ID and pod UID -> pod.
//
// The kubelet puts every container into a cgroup below the pod's, and the runtime names the
// container's cgroup after the container ID, so the cgroup path says both. Path shapes differ
// with the kubelet's cgroup driver (cgroupfs: /kubepods/burstable/pod<uid>/<id>; systemd:
// /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/
// cri-containerd-<id>.scope) and the runtime (cri-containerd-, docker-, crio- prefixes), and
// /proc/PID/cgroup has one line per hierarchy on cgroup v1 and a single 0::/... line on v2.
// The pod UID is enough to find the pod through the Kubernetes API; the container ID is for
// lookups in containerd (ContainerLookup).
package podmap

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/types"
)

// Container is what a cgroup path says about a process's container.
type Container struct {
	// PodUID is the UID of the pod, from the pod's cgroup.
	PodUID types.UID
	// ID is the container's runtime ID (64 hex digits) from the container's cgroup; empty when
	// the process sits in the pod's cgroup itself.
	ID string
}

// ErrNotInPod is wrapped when a process's cgroups are not below a pod's: a process of the host
// or of a container the kubelet does not manage.
var ErrNotInPod = errors.New("process is not in a kubernetes pod's cgroup")

var (
	// A pod UID as the kubelet writes it: with dashes (cgroupfs) or underscores (systemd).
	podUIDRE = regexp.MustCompile(`^[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}$`)
	// A container ID: 64 hex digits.
	containerIDRE = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Runtime prefixes of container scopes under the systemd driver. crio-conmon- is the monitor
// process of CRI-O, not a container, and is rejected by the ID check (its rest is "conmon-...").
var scopePrefixes = []string{"cri-containerd-", "docker-", "crio-", "containerd-"}

// ParseCgroupFile reads /proc/PID/cgroup (v1: one line per hierarchy, v2: "0::/path"; hybrid
// both) and returns the container of the first line whose path is below a pod.
func ParseCgroupFile(r io.Reader) (Container, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	var fallback *Container
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		// hierarchy-ID:controller-list:cgroup-path; the path may contain colons.
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			return Container{}, fmt.Errorf("malformed cgroup line %q: want hierarchy:controllers:path", line)
		}
		c, ok := ParseCgroupPath(parts[2])
		if !ok {
			continue
		}
		if c.ID != "" {
			return c, nil
		}
		if fallback == nil {
			fallback = &c
		}
	}
	if err := sc.Err(); err != nil {
		return Container{}, fmt.Errorf("reading cgroup file: %w", err)
	}
	if fallback != nil {
		return *fallback, nil
	}
	return Container{}, ErrNotInPod
}

// ParseCgroupPath finds the pod and container in one cgroup path. It looks at path segments
// only, so paths relative to a cgroup namespace ("/../../kubepods-...") and kubelets nested in
// other cgroups (kind: "/docker/<id>/kubepods/...") parse too.
func ParseCgroupPath(path string) (Container, bool) {
	segs := strings.Split(path, "/")
	for i, seg := range segs {
		uid, ok := podUID(seg)
		if !ok {
			continue
		}
		c := Container{PodUID: uid}
		if i+1 < len(segs) {
			c.ID = containerID(segs[i+1])
		}
		return c, true
	}
	return Container{}, false
}

// podUID recognises a pod's cgroup: "pod<uid>" (cgroupfs) or
// "[kubelet-]kubepods[-<qos>]-pod<uid_with_underscores>.slice" (systemd; kind adds kubelet-).
func podUID(seg string) (types.UID, bool) {
	s := strings.TrimSuffix(seg, ".slice")
	i := strings.LastIndex(s, "pod")
	if i < 0 {
		return "", false
	}
	if i > 0 && (!strings.Contains(s[:i], "kubepods") || s[i-1] != '-') {
		return "", false
	}
	uid := s[i+len("pod"):]
	if !podUIDRE.MatchString(uid) {
		return "", false
	}
	return types.UID(strings.ToLower(strings.ReplaceAll(uid, "_", "-"))), true
}

// containerID recognises a container's cgroup: "<id>" (cgroupfs) or "<runtime>-<id>.scope"
// (systemd).
func containerID(seg string) string {
	s := strings.TrimSuffix(seg, ".scope")
	for _, p := range scopePrefixes {
		if rest, ok := strings.CutPrefix(s, p); ok {
			s = rest
			break
		}
	}
	if containerIDRE.MatchString(s) {
		return s
	}
	return ""
}
