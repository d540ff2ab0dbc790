package gpupod

import (
	"fmt"

	v1 "k8s.io/api/core/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// maxNameLength is the longest object name the API server accepts (a DNS subdomain).
const maxNameLength = 253

// CheckpointName names a GPUCheckpoint for pod: the pod's name, cut so that suffix fits.
func CheckpointName(pod *v1.Pod, suffix string) string {
	name := pod.Name
	if limit := maxNameLength - len(suffix); len(name) > limit {
		name = name[:limit]
	}
	return name + suffix
}

// MoveName names the GPUCheckpoint of a controller's attempt to move a suspended pod
// (verb "resume", "migrate"): one name per suspension and attempt, so a retry creates no
// second request.
func MoveName(pod *v1.Pod, verb string, suspension *kv1.GPUCheckpoint, attempt int) string {
	uid := string(suspension.UID)
	if len(uid) > 8 {
		uid = uid[:8]
	}
	return CheckpointName(pod, fmt.Sprintf("-%s-%s-%d", verb, uid, attempt+1))
}
