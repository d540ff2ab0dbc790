package scheme

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kybernate/kybernate/apis/config"
)

func TestDecodeControllerConfiguration(t *testing.T) {
	defaults := config.ControllerConfiguration{
		LeaderElection: config.ControllerLeaderElection{
			LeaderElect:       true,
			ResourceName:      "kybernate-resume-controller",
			ResourceNamespace: "kybernate-system",
			LeaseDuration:     metav1.Duration{Duration: 15 * time.Second},
			RenewDeadline:     metav1.Duration{Duration: 10 * time.Second},
			RetryPeriod:       metav1.Duration{Duration: 2 * time.Second},
		},
		TimeSliceQuantum:          metav1.Duration{Duration: time.Minute},
		TimeSliceMinQuantumFactor: 10,
		MigrationMinWait:          metav1.Duration{Duration: 30 * time.Second},
		MigrationBytesPerSecond:   1 << 30,
		SpreadingDelay:            metav1.Duration{Duration: 30 * time.Second},
	}
	const head = "apiVersion: config.kybernate.io/v1\nkind: ControllerConfiguration\n"
	tests := []struct {
		name    string
		data    string
		want    func(*config.ControllerConfiguration)
		wantErr string
	}{
		{name: "defaults", data: head},
		{
			name: "set",
			data: head + "leaderElection:\n  leaderElect: false\n  resourceNamespace: ops\ndisableMigration: true\ndisableSpreading: true\nspreadingDelay: 0s\ntimeSliceQuantum: 5s\n",
			want: func(c *config.ControllerConfiguration) {
				c.LeaderElection.LeaderElect = false
				c.LeaderElection.ResourceNamespace = "ops"
				c.DisableMigration = true
				c.DisableSpreading = true
				c.SpreadingDelay.Duration = 0
				c.TimeSliceQuantum.Duration = 5 * time.Second
			},
		},
		{name: "unknown field", data: head + "timeSliceQuantm: 5s\n", wantErr: `unknown field "timeSliceQuantm"`},
		{name: "bad value", data: head + "timeSliceQuantum: 10ms\n", wantErr: "timeSliceQuantum: Invalid value: \"10ms\": must be at least 1s"},
		{name: "bad lease", data: head + "leaderElection:\n  renewDeadline: 20s\n", wantErr: "leaderElection.leaseDuration: Invalid value: \"15s\": must be longer than renewDeadline"},
		{name: "wrong kind", data: "apiVersion: config.kybernate.io/v1\nkind: KubeSchedulerConfiguration\n", wantErr: "no kind"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeControllerConfiguration([]byte(tt.data))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := defaults
			want.TypeMeta = got.TypeMeta
			if tt.want != nil {
				tt.want(&want)
			}
			if diff := cmp.Diff(&want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	if diff := cmp.Diff(&defaults, DefaultControllerConfiguration()); diff != "" {
		t.Errorf("DefaultControllerConfiguration (-want +got):\n%s", diff)
	}
}

// The shipped file spells out the defaults.
func TestShippedControllerConfiguration(t *testing.T) {
	got, err := LoadControllerConfiguration(filepath.Join("..", "..", "..", "manifests", "scheduler", "controllers.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultControllerConfiguration()
	want.TypeMeta = got.TypeMeta
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("manifests/scheduler/controllers.yaml differs from the defaults (-want +got):\n%s", diff)
	}
}
