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
		return config.CheckpointPreemptionArgs{
			MinCandidateNodesPercentage: 10,
			MinCandidateNodesAbsolute:   100,
			SuspendTimeout:              metav1.Duration{Duration: 5 * time.Minute},
			TimeSliceQuantum:            metav1.Duration{Duration: time.Minute},
			TimeSliceMinQuantumFactor:   10,
			MigrationMinWait:            metav1.Duration{Duration: 30 * time.Second},
			MigrationBytesPerSecond:     1 << 30,
		}
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
			name:   "zero suspend timeout",
			mutate: func(a *config.CheckpointPreemptionArgs) { a.SuspendTimeout.Duration = 0 },
			want:   field.ErrorList{field.Invalid(path.Child("suspendTimeout"), nil, "")},
		},
		{
			name:   "negative min runtime",
			mutate: func(a *config.CheckpointPreemptionArgs) { a.DefaultMinRuntime.Duration = -time.Second },
			want:   field.ErrorList{field.Invalid(path.Child("defaultMinRuntime"), nil, "")},
		},
		{
			name:   "quantum under a second",
			mutate: func(a *config.CheckpointPreemptionArgs) { a.TimeSliceQuantum.Duration = 500 * time.Millisecond },
			want:   field.ErrorList{field.Invalid(path.Child("timeSliceQuantum"), nil, "")},
		},
		{
			name:   "quantum factor zero",
			mutate: func(a *config.CheckpointPreemptionArgs) { a.TimeSliceMinQuantumFactor = 0 },
			want:   field.ErrorList{field.Invalid(path.Child("timeSliceMinQuantumFactor"), nil, "")},
		},
		{
			name:   "negative migration wait",
			mutate: func(a *config.CheckpointPreemptionArgs) { a.MigrationMinWait.Duration = -time.Second },
			want:   field.ErrorList{field.Invalid(path.Child("migrationMinWait"), nil, "")},
		},
		{
			name:   "migration rate too low",
			mutate: func(a *config.CheckpointPreemptionArgs) { a.MigrationBytesPerSecond = 1000 },
			want:   field.ErrorList{field.Invalid(path.Child("migrationBytesPerSecond"), nil, "")},
		},
		{
			name: "every error at once",
			mutate: func(a *config.CheckpointPreemptionArgs) {
				a.SuspendTimeout.Duration = 0
				a.TimeSliceMinQuantumFactor = 5000
			},
			want: field.ErrorList{
				field.Invalid(path.Child("suspendTimeout"), nil, ""),
				field.Invalid(path.Child("timeSliceMinQuantumFactor"), nil, ""),
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
