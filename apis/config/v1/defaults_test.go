package v1

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func TestSetDefaultsGPUShareArgs(t *testing.T) {
	tests := []struct {
		name string
		in   GPUShareArgs
		want GPUShareArgs
	}{
		{name: "empty", want: GPUShareArgs{ScoringStrategy: ptr.To[ScoringStrategyType]("MostAllocated")}},
		{
			name: "set value kept",
			in:   GPUShareArgs{ScoringStrategy: ptr.To[ScoringStrategyType]("LeastAllocated")},
			want: GPUShareArgs{ScoringStrategy: ptr.To[ScoringStrategyType]("LeastAllocated")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.in
			SetDefaults_GPUShareArgs(&got)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestSetDefaultsCheckpointPreemptionArgs(t *testing.T) {
	defaults := CheckpointPreemptionArgs{
		MinCandidateNodesPercentage: ptr.To[int32](10),
		MinCandidateNodesAbsolute:   ptr.To[int32](100),
		DefaultMinRuntime:           &metav1.Duration{},
	}
	tests := []struct {
		name string
		in   CheckpointPreemptionArgs
		want CheckpointPreemptionArgs
	}{
		{name: "empty", want: defaults},
		{
			name: "set values kept, zero included",
			in: CheckpointPreemptionArgs{
				MinCandidateNodesPercentage: ptr.To[int32](0),
				DefaultMinRuntime:           &metav1.Duration{Duration: time.Minute},
			},
			want: CheckpointPreemptionArgs{
				MinCandidateNodesPercentage: ptr.To[int32](0),
				MinCandidateNodesAbsolute:   ptr.To[int32](100),
				DefaultMinRuntime:           &metav1.Duration{Duration: time.Minute},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.in
			SetDefaults_CheckpointPreemptionArgs(&got)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestSetDefaultsControllerConfiguration(t *testing.T) {
	defaults := ControllerConfiguration{
		LeaderElection: ControllerLeaderElection{
			LeaderElect:       ptr.To(true),
			ResourceName:      "kybernate-resume-controller",
			ResourceNamespace: "kybernate-system",
			LeaseDuration:     &metav1.Duration{Duration: 15 * time.Second},
			RenewDeadline:     &metav1.Duration{Duration: 10 * time.Second},
			RetryPeriod:       &metav1.Duration{Duration: 2 * time.Second},
		},
		DisableResume:             ptr.To(false),
		DisableTimeSlicing:        ptr.To(false),
		DefaultMinRuntime:         &metav1.Duration{},
		TimeSliceQuantum:          &metav1.Duration{Duration: time.Minute},
		TimeSliceMinQuantumFactor: ptr.To[int32](10),
		DisableMigration:          ptr.To(false),
		DisableSpreading:          ptr.To(false),
		SpreadingDelay:            &metav1.Duration{Duration: 30 * time.Second},
		MigrationMinWait:          &metav1.Duration{Duration: 30 * time.Second},
		MigrationBytesPerSecond:   ptr.To[int64](1 << 30),
	}
	set := defaults
	set.TimeSliceQuantum = &metav1.Duration{Duration: 10 * time.Minute}
	set.DisableMigration = ptr.To(true)
	set.DisableSpreading = ptr.To(true)
	set.MigrationMinWait = &metav1.Duration{}
	set.LeaderElection.ResourceNamespace = "ops"
	tests := []struct {
		name string
		in   ControllerConfiguration
		want ControllerConfiguration
	}{
		{name: "empty", want: defaults},
		{
			name: "set values kept, zero included",
			in: ControllerConfiguration{
				LeaderElection:   ControllerLeaderElection{ResourceNamespace: "ops"},
				TimeSliceQuantum: &metav1.Duration{Duration: 10 * time.Minute},
				DisableMigration: ptr.To(true),
				DisableSpreading: ptr.To(true),
				MigrationMinWait: &metav1.Duration{},
			},
			want: set,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.in
			SetDefaults_ControllerConfiguration(&got)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
