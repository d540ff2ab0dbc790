package app

import (
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	ok := Options{ScoringStrategy: "MostAllocated", DefaultMinRuntime: time.Minute}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid options: %v", err)
	}
	bad := Options{ScoringStrategy: "Random", DefaultMinRuntime: -time.Second, TLSCertFile: "cert.pem"}
	err := bad.Validate()
	for _, want := range []string{"--tls-cert-file and --tls-private-key-file", "--scoring-strategy \"Random\"", "--default-min-runtime -1s"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}
