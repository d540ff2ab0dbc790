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
	return cut(pod.Name, maxNameLength-len(suffix)) + suffix
}

// generatedSuffix is the length of the random suffix the API server appends to a GenerateName.
const generatedSuffix = 5

// CheckpointPrefix is a GenerateName for a GPUCheckpoint of pod: the pod's name, cut so that
// suffix and the API server's random characters fit.
func CheckpointPrefix(pod *v1.Pod, suffix string) string {
	return cut(pod.Name, maxNameLength-len(suffix)-generatedSuffix) + suffix
}

func cut(name string, limit int) string {
	if len(name) > limit {
		return name[:limit]
	}
	return name
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
