package scheme

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kybernate/kybernate/apis/config/validation"
)

// The controllers' configuration file is written by cluster operators: decoding it never
// panics, and what decodes validates.
func FuzzControllerConfiguration(f *testing.F) {
	shipped, err := os.ReadFile(filepath.Join("..", "..", "..", "manifests", "scheduler", "controllers.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(shipped)
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := DecodeControllerConfiguration(data)
		if err != nil {
			return
		}
		if err := validation.ValidateControllerConfiguration(cfg); err != nil {
			t.Errorf("decoded a configuration that does not validate: %v", err)
		}
	})
}
