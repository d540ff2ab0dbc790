package scheme

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation/field"
	schedconfig "k8s.io/kubernetes/pkg/scheduler/apis/config"
	schedvalidation "k8s.io/kubernetes/pkg/scheduler/apis/config/validation"

	"github.com/kybernate/kybernate/apis/config"
	"github.com/kybernate/kybernate/apis/config/validation"
)

var codecs = serializer.NewCodecFactory(Scheme, serializer.EnableStrict)

func decode(t *testing.T, data []byte) (*schedconfig.KubeSchedulerConfiguration, error) {
	t.Helper()
	obj, _, err := codecs.UniversalDecoder().Decode(data, nil, nil)
	if err != nil {
		return nil, err
	}
	cfg, ok := obj.(*schedconfig.KubeSchedulerConfiguration)
	if !ok {
		t.Fatalf("decoded %T, want *KubeSchedulerConfiguration", obj)
	}
	return cfg, nil
}

func pluginArgs(cfg *schedconfig.KubeSchedulerConfiguration, profile, plugin string) runtime.Object {
	for _, p := range cfg.Profiles {
		if p.SchedulerName != profile {
			continue
		}
		for _, pc := range p.PluginConfig {
			if pc.Name == plugin {
				return pc.Args
			}
		}
	}
	return nil
}

// The profile users get must decode, default and validate through kube-scheduler's own scheme.
func TestShippedSchedulerConfig(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "manifests", "scheduler", "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := decode(t, data)
	if err != nil {
		t.Fatalf("decoding manifests/scheduler/config.yaml: %v", err)
	}
	if err := schedvalidation.ValidateKubeSchedulerConfiguration(cfg); err != nil {
		t.Fatalf("kube-scheduler rejects the shipped configuration: %v", err)
	}

	wantGPUShare := &config.GPUShareArgs{ScoringStrategy: config.MostAllocated}
	if diff := cmp.Diff(wantGPUShare, pluginArgs(cfg, "kybernate-scheduler", "GPUShare")); diff != "" {
		t.Errorf("GPUShare args (-want +got):\n%s", diff)
	}
	wantPreemption := &config.CheckpointPreemptionArgs{
		MinCandidateNodesPercentage: 10,
		MinCandidateNodesAbsolute:   100,
		DefaultMinRuntime:           metav1.Duration{},
	}
	gotPreemption := pluginArgs(cfg, "kybernate-scheduler", "CheckpointPreemption")
	if diff := cmp.Diff(wantPreemption, gotPreemption); diff != "" {
		t.Errorf("CheckpointPreemption args (-want +got):\n%s", diff)
	}
	if err := validation.ValidateGPUShareArgs(field.NewPath("args"), wantGPUShare); err != nil {
		t.Errorf("shipped GPUShare args invalid: %v", err)
	}
	if args, ok := gotPreemption.(*config.CheckpointPreemptionArgs); !ok {
		t.Errorf("CheckpointPreemption args are %T", gotPreemption)
	} else if err := validation.ValidateCheckpointPreemptionArgs(field.NewPath("args"), args); err != nil {
		t.Errorf("shipped CheckpointPreemption args invalid: %v", err)
	}
}

func TestDecodePluginArgs(t *testing.T) {
	const header = `apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: kybernate-scheduler
  pluginConfig:
`
	tests := []struct {
		name    string
		config  string
		plugin  string
		want    runtime.Object
		wantErr string
	}{
		{
			name:   "empty GPUShare args are defaulted",
			config: "  - name: GPUShare\n    args: {}\n",
			plugin: "GPUShare",
			want:   &config.GPUShareArgs{ScoringStrategy: config.MostAllocated},
		},
		{
			name:   "GPUShare spread",
			config: "  - name: GPUShare\n    args:\n      scoringStrategy: LeastAllocated\n",
			plugin: "GPUShare",
			want:   &config.GPUShareArgs{ScoringStrategy: config.LeastAllocated},
		},
		{
			name:   "CheckpointPreemption partly set",
			config: "  - name: CheckpointPreemption\n    args:\n      defaultMinRuntime: 2m\n",
			plugin: "CheckpointPreemption",
			want: &config.CheckpointPreemptionArgs{
				MinCandidateNodesPercentage: 10,
				MinCandidateNodesAbsolute:   100,
				DefaultMinRuntime:           metav1.Duration{Duration: 2 * time.Minute},
			},
		},
		{
			name:    "unknown field is an error",
			config:  "  - name: GPUShare\n    args:\n      scoringStrategi: MostAllocated\n",
			wantErr: `unknown field "scoringStrategi"`,
		},
		{
			name:    "bad duration is an error",
			config:  "  - name: CheckpointPreemption\n    args:\n      defaultMinRuntime: soon\n",
			wantErr: "soon",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := decode(t, []byte(header+tt.config))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, pluginArgs(cfg, "kybernate-scheduler", tt.plugin)); diff != "" {
				t.Errorf("args (-want +got):\n%s", diff)
			}
		})
	}
}
