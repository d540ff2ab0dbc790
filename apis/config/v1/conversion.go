package v1

import (
	"k8s.io/apimachinery/pkg/conversion"

	"github.com/kybernate/kybernate/apis/config"
)

// Convert_v1_GPUShareArgs_To_config_GPUShareArgs converts the optional scoring strategy, which
// defaulting has set before conversion runs.
func Convert_v1_GPUShareArgs_To_config_GPUShareArgs(in *GPUShareArgs, out *config.GPUShareArgs, s conversion.Scope) error {
	if err := autoConvert_v1_GPUShareArgs_To_config_GPUShareArgs(in, out, s); err != nil {
		return err
	}
	if in.ScoringStrategy != nil {
		out.ScoringStrategy = config.ScoringStrategyType(*in.ScoringStrategy)
	}
	return nil
}

// Convert_config_GPUShareArgs_To_v1_GPUShareArgs converts the scoring strategy.
func Convert_config_GPUShareArgs_To_v1_GPUShareArgs(in *config.GPUShareArgs, out *GPUShareArgs, s conversion.Scope) error {
	if err := autoConvert_config_GPUShareArgs_To_v1_GPUShareArgs(in, out, s); err != nil {
		return err
	}
	if in.ScoringStrategy != "" {
		strategy := ScoringStrategyType(in.ScoringStrategy)
		out.ScoringStrategy = &strategy
	}
	return nil
}
