package validation

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/kybernate/kybernate/apis/config"
)

// fieldErrors flattens an aggregate of field errors for comparison.
func fieldErrors(err error) field.ErrorList {
	if err == nil {
		return nil
	}
	var list field.ErrorList
	for _, e := range err.(utilerrors.Aggregate).Errors() {
		list = append(list, e.(*field.Error))
	}
	return list
}

var ignoreDetail = cmpopts.IgnoreFields(field.Error{}, "Detail", "BadValue")

func TestValidateGPUShareArgs(t *testing.T) {
	tests := []struct {
		name string
		args config.GPUShareArgs
		want field.ErrorList
	}{
		{name: "MostAllocated", args: config.GPUShareArgs{ScoringStrategy: config.MostAllocated}},
		{name: "LeastAllocated", args: config.GPUShareArgs{ScoringStrategy: config.LeastAllocated}},
		{
			name: "unknown strategy",
			args: config.GPUShareArgs{ScoringStrategy: "Random"},
			want: field.ErrorList{field.NotSupported[string](field.NewPath("args", "scoringStrategy"), "Random", nil)},
		},
		{
			name: "empty strategy",
			args: config.GPUShareArgs{},
			want: field.ErrorList{field.NotSupported[string](field.NewPath("args", "scoringStrategy"), "", nil)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := fieldErrors(ValidateGPUShareArgs(field.NewPath("args"), &tt.args))
			if diff := cmp.Diff(tt.want, got, ignoreDetail); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}

func TestValidateCheckpointPreemptionArgs(t *testing.T) {
	valid := func() config.CheckpointPreemptionArgs {
		return config.CheckpointPreemptionArgs{MinCandidateNodesPercentage: 10, MinCandidateNodesAbsolute: 100}
	}
	path := field.NewPath("args")
	tests := []struct {
		name   string
		mutate func(*config.CheckpointPreemptionArgs)
		want   field.ErrorList
	}{
		{name: "defaults", mutate: func(*config.CheckpointPreemptionArgs) {}},
		{
			name:   "percentage above 100",
			mutate: func(a *config.CheckpointPreemptionArgs) { a.MinCandidateNodesPercentage = 101 },
			want:   field.ErrorList{field.Invalid(path.Child("minCandidateNodesPercentage"), nil, "")},
		},
		{
			name:   "negative absolute",
			mutate: func(a *config.CheckpointPreemptionArgs) { a.MinCandidateNodesAbsolute = -1 },
			want:   field.ErrorList{field.Invalid(path.Child("minCandidateNodesAbsolute"), nil, "")},
		},
		{
			name: "both candidate bounds zero",
			mutate: func(a *config.CheckpointPreemptionArgs) {
				a.MinCandidateNodesPercentage, a.MinCandidateNodesAbsolute = 0, 0
			},
			want: field.ErrorList{field.Invalid(path.Child("minCandidateNodesAbsolute"), nil, "")},
		},
		{
			name:   "negative min runtime",
			mutate: func(a *config.CheckpointPreemptionArgs) { a.DefaultMinRuntime.Duration = -time.Second },
			want:   field.ErrorList{field.Invalid(path.Child("defaultMinRuntime"), nil, "")},
		},
		{
			name: "every error at once",
			mutate: func(a *config.CheckpointPreemptionArgs) {
				a.MinCandidateNodesPercentage = 101
				a.DefaultMinRuntime.Duration = -time.Second
			},
			want: field.ErrorList{
				field.Invalid(path.Child("minCandidateNodesPercentage"), nil, ""),
				field.Invalid(path.Child("defaultMinRuntime"), nil, ""),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := valid()
			tt.mutate(&args)
			got := fieldErrors(ValidateCheckpointPreemptionArgs(path, &args))
			if diff := cmp.Diff(tt.want, got, ignoreDetail); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}

func TestValidateControllerConfiguration(t *testing.T) {
	valid := func() config.ControllerConfiguration {
		return config.ControllerConfiguration{
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
	}
	le := field.NewPath("leaderElection")
	tests := []struct {
		name   string
		mutate func(*config.ControllerConfiguration)
		want   field.ErrorList
	}{
		{name: "defaults", mutate: func(*config.ControllerConfiguration) {}},
		{
			name:   "no lease name",
			mutate: func(c *config.ControllerConfiguration) { c.LeaderElection.ResourceName = "" },
			want:   field.ErrorList{field.Required(le.Child("resourceName"), "")},
		},
		{
			name:   "no lease namespace",
			mutate: func(c *config.ControllerConfiguration) { c.LeaderElection.ResourceNamespace = "" },
			want:   field.ErrorList{field.Required(le.Child("resourceNamespace"), "")},
		},
		{
			name:   "renew deadline not under the lease",
			mutate: func(c *config.ControllerConfiguration) { c.LeaderElection.RenewDeadline.Duration = 20 * time.Second },
			want:   field.ErrorList{field.Invalid(le.Child("leaseDuration"), nil, "")},
		},
		{
			name:   "retry not under the renew deadline",
			mutate: func(c *config.ControllerConfiguration) { c.LeaderElection.RetryPeriod.Duration = 10 * time.Second },
			want:   field.ErrorList{field.Invalid(le.Child("renewDeadline"), nil, "")},
		},
		{
			name: "timings unchecked without election",
			mutate: func(c *config.ControllerConfiguration) {
				c.LeaderElection.LeaderElect = false
				c.LeaderElection.RetryPeriod.Duration = 0
			},
		},
		{
			name:   "negative min runtime",
			mutate: func(c *config.ControllerConfiguration) { c.DefaultMinRuntime.Duration = -time.Second },
			want:   field.ErrorList{field.Invalid(field.NewPath("defaultMinRuntime"), nil, "")},
		},
		{
			name:   "quantum under a second",
			mutate: func(c *config.ControllerConfiguration) { c.TimeSliceQuantum.Duration = 500 * time.Millisecond },
			want:   field.ErrorList{field.Invalid(field.NewPath("timeSliceQuantum"), nil, "")},
		},
		{
			name:   "quantum factor zero",
			mutate: func(c *config.ControllerConfiguration) { c.TimeSliceMinQuantumFactor = 0 },
			want:   field.ErrorList{field.Invalid(field.NewPath("timeSliceMinQuantumFactor"), nil, "")},
		},
		{
			name:   "negative migration wait",
			mutate: func(c *config.ControllerConfiguration) { c.MigrationMinWait.Duration = -time.Second },
			want:   field.ErrorList{field.Invalid(field.NewPath("migrationMinWait"), nil, "")},
		},
		{
			name:   "negative spreading delay",
			mutate: func(c *config.ControllerConfiguration) { c.SpreadingDelay.Duration = -time.Second },
			want:   field.ErrorList{field.Invalid(field.NewPath("spreadingDelay"), nil, "")},
		},
		{
			name:   "migration rate too low",
			mutate: func(c *config.ControllerConfiguration) { c.MigrationBytesPerSecond = 1000 },
			want:   field.ErrorList{field.Invalid(field.NewPath("migrationBytesPerSecond"), nil, "")},
		},
		{
			name: "every error at once",
			mutate: func(c *config.ControllerConfiguration) {
				c.TimeSliceQuantum.Duration = 0
				c.TimeSliceMinQuantumFactor = 5000
			},
			want: field.ErrorList{
				field.Invalid(field.NewPath("timeSliceQuantum"), nil, ""),
				field.Invalid(field.NewPath("timeSliceMinQuantumFactor"), nil, ""),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid()
			tt.mutate(&cfg)
			got := fieldErrors(ValidateControllerConfiguration(&cfg))
			if diff := cmp.Diff(tt.want, got, ignoreDetail); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}
