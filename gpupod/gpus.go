package gpupod

import (
	"fmt"
	"slices"
	"strings"
	"unicode"

	v1 "k8s.io/api/core/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// uuidPrefix starts every GPU UUID, as NVML and the driver print them.
const uuidPrefix = "GPU-"

// ParseGPUs decodes a kybernate.io/gpus value: the UUIDs of a pod's GPUs, comma separated, in
// the order of the pod's GPUs. Blanks around items and empty items are ignored; an item that is
// no GPU UUID, a UUID listed twice and a value without any UUID are errors. The exact form of a
// UUID is checked where it is used (the agent's CUDA driver, the shim's driver table).
func ParseGPUs(value string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(value, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !strings.HasPrefix(p, uuidPrefix) || strings.ContainsFunc(p, unicode.IsSpace) {
			return nil, fieldError(kv1.AnnotationGPUs, value, "is not a list of GPU UUIDs: %q is not a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)", p)
		}
		if slices.Contains(out, p) {
			return nil, fieldError(kv1.AnnotationGPUs, value, "is not a list of GPU UUIDs: gpu %s listed twice", p)
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, fieldError(kv1.AnnotationGPUs, value, "is not a list of GPU UUIDs: no gpu uuid")
	}
	return out, nil
}

// FormatGPUs encodes GPU UUIDs as a kybernate.io/gpus value.
func FormatGPUs(uuids []string) string { return strings.Join(uuids, ",") }

// AssignedGPUs returns the GPUs written at binding (kybernate.io/gpus), or nil when the pod has
// none or the value does not parse: such a pod counts as placed on no GPU.
func AssignedGPUs(pod *v1.Pod) []string {
	s, ok := pod.Annotations[kv1.AnnotationGPUs]
	if !ok || strings.TrimSpace(s) == "" {
		return nil
	}
	gpus, err := ParseGPUs(s)
	if err != nil {
		return nil
	}
	return gpus
}

// PodGPUs is AssignedGPUs for callers that must tell a missing annotation (ok false) from a
// bad one (an error naming the annotation and its value).
func PodGPUs(pod *v1.Pod) (gpus []string, ok bool, err error) {
	s, found := pod.Annotations[kv1.AnnotationGPUs]
	if !found || strings.TrimSpace(s) == "" {
		return nil, false, nil
	}
	gpus, err = ParseGPUs(s)
	return gpus, err == nil, err
}

// FieldError is a kybernate.io annotation (or the kybernate.io/gpu resource) whose value does
// not decode: it names the annotation and the value.
type FieldError struct {
	// Field is the annotation's name, Value the value found.
	Field, Value string
	// Resource is set when Field names a resource request, not an annotation.
	Resource bool
	// Reason says what is wrong, as a sentence's predicate ("must be positive").
	Reason string
	// Err is the underlying parse error, if any.
	Err error
}

func (e *FieldError) Error() string {
	kind := "annotation"
	if e.Resource {
		kind = "resource request"
	}
	msg := fmt.Sprintf("%s %s=%q %s", kind, e.Field, e.Value, e.Reason)
	if strings.TrimSpace(e.Value) == "" {
		msg = fmt.Sprintf("%s %s %s", kind, e.Field, e.Reason)
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *FieldError) Unwrap() error { return e.Err }

func fieldError(field, value, format string, args ...any) error {
	return &FieldError{Field: field, Value: value, Reason: fmt.Sprintf(format, args...)}
}
