package scheme

import (
	"os"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation/field"
	schedconfig "k8s.io/kubernetes/pkg/scheduler/apis/config"

	"github.com/kybernate/kybernate/apis/config"
	"github.com/kybernate/kybernate/apis/config/validation"
)

// The scheduler's configuration file is written by cluster operators: decoding, defaulting and
// validating Kybernate's plugin args never panics, and args that validate are within the
// bounds the plugins rely on.
func FuzzPluginArgs(f *testing.F) {
	shipped, err := os.ReadFile(filepath.Join("..", "..", "..", "manifests", "scheduler", "config.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(shipped)
	const header = "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n- schedulerName: kybernate-scheduler\n  pluginConfig:\n"
	f.Add([]byte(header + "  - name: GPUShare\n    args:\n      scoringStrategy: LeastAllocated\n"))
	f.Add([]byte(header + "  - name: CheckpointPreemption\n    args:\n      defaultMinRuntime: -1s\n      minCandidateNodesPercentage: 101\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		obj, _, err := codecs.UniversalDecoder().Decode(data, nil, nil)
		if err != nil {
			return
		}
		cfg, ok := obj.(*schedconfig.KubeSchedulerConfiguration)
		if !ok {
			return
		}
		for _, p := range cfg.Profiles {
			for _, pc := range p.PluginConfig {
				path := field.NewPath("pluginConfig").Key(pc.Name).Child("args")
				switch args := pc.Args.(type) {
				case *config.GPUShareArgs:
					if validation.ValidateGPUShareArgs(path, args) == nil &&
						args.ScoringStrategy != config.MostAllocated && args.ScoringStrategy != config.LeastAllocated {
						t.Errorf("scoring strategy %q validated", args.ScoringStrategy)
					}
				case *config.CheckpointPreemptionArgs:
					if validation.ValidateCheckpointPreemptionArgs(path, args) != nil {
						continue
					}
					if p, a := args.MinCandidateNodesPercentage, args.MinCandidateNodesAbsolute; p < 0 || p > 100 || a < 0 ||
						(p == 0 && a == 0) || args.DefaultMinRuntime.Duration < 0 {
						t.Errorf("args %+v validated", args)
					}
				}
			}
		}
	})
}
