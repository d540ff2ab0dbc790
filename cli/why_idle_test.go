package cli

import (
	"strings"
	"testing"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

func TestSummarizeIdleSleep(t *testing.T) {
	w := &Why{Name: "llm", State: string(kv1.PodSuspended), Suspension: &CheckpointView{Reason: kv1.ReasonIdle}}
	if got := summarize(w); !strings.HasPrefix(got, "Asleep:") || !strings.Contains(got, "kybernate-activator") {
		t.Errorf("summarize(idle sleep) = %q", got)
	}
}
