package spec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The shim's settings file is read by every shim containerd starts: whatever it holds,
// LoadConfig returns settings that validate, or an error naming the file; it never panics.
func FuzzLoadConfig(f *testing.F) {
	f.Add([]byte("driverRoot: /run/nvidia/driver\ndeviceNodes: Assigned\ncriuTimeout: 10m\nagentTimeout: 5m\n"))
	f.Add([]byte("gpus: [{uuid: GPU-aaaaaaaa-0000-0000-0000-000000000001, minor: 0}]\nmanageCgroupsMode: strict\n"))
	f.Add([]byte("criuTimeout: -1s\ndeviceNodes: Some\n"))
	f.Add([]byte("agentTimeout: 5\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "shim.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := LoadConfig(path, true)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Errorf("LoadConfig returned settings that do not validate: %v", err)
		}
	})
}
