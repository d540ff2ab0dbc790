package app

import (
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	ok := Options{ScoringStrategy: "MostAllocated", DefaultMinRuntime: time.Minute, KubeAPIQPS: 100, KubeAPIBurst: 200}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid options: %v", err)
	}
	bad := Options{ScoringStrategy: "Random", DefaultMinRuntime: -time.Second, TLSCertFile: "cert.pem", KubeAPIQPS: 0, KubeAPIBurst: 200}
	err := bad.Validate()
	for _, want := range []string{"--tls-cert-file and --tls-private-key-file", "--scoring-strategy \"Random\"", "--default-min-runtime -1s", "--kube-api-qps 0"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}
