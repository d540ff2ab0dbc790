package spec

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

const (
	gpu0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
	gpu1 = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
	gpu2 = "GPU-aaaaaaaa-0000-0000-0000-000000000002"
)

// fakeDevices are the host's device nodes: the NVIDIA ones of a 3-GPU machine (nvidia-uvm
// has a dynamic major).
type fakeDevices map[string]Device

func (f fakeDevices) Device(path string) (Device, error) {
	d, ok := f[path]
	if !ok {
		return Device{}, &os.PathError{Op: "stat", Path: path, Err: os.ErrNotExist}
	}
	return d, nil
}

func machine(devRoot string) fakeDevices {
	f := fakeDevices{}
	for name, d := range map[string]Device{
		"nvidiactl": {195, 255}, "nvidia-uvm": {509, 0}, "nvidia-uvm-tools": {509, 1},
		"nvidia0": {195, 0}, "nvidia1": {195, 1}, "nvidia2": {195, 2},
	} {
		f[filepath.Join(devRoot, "dev", name)] = d
	}
	return f
}

// driverRoot builds a fake driver root: the driver's GPU table under proc/, libraries with
// their symlinks, nvidia-smi.
func driverRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	write := func(rel, content string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(rel, target string) {
		if err := os.Symlink(target, filepath.Join(root, rel)); err != nil {
			t.Fatal(err)
		}
	}
	for i, bus := range []string{"0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0"} {
		write("proc/driver/nvidia/gpus/"+bus+"/information", fmt.Sprintf(
			"Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 0\nGPU UUID: \t GPU-aaaaaaaa-0000-0000-0000-00000000000%d\nVideo BIOS: \t 96.00.99.00.01\nBus Type: \t PCIe\nBus Location: \t %s\nDevice Minor: \t %d\nGPU Excluded:\t No\n", i, bus, i))
	}
	lib := "usr/lib/x86_64-linux-gnu/"
	write(lib+"libcuda.so.580.95.05", "elf")
	link(lib+"libcuda.so.1", "libcuda.so.580.95.05")
	link(lib+"libcuda.so", "libcuda.so.1")
	write(lib+"libnvidia-ml.so.580.95.05", "elf")
	link(lib+"libnvidia-ml.so.1", "/"+lib+"libnvidia-ml.so.580.95.05") // absolute: read inside the root
	write(lib+"libnvidia-ptxjitcompiler.so.580.95.05", "elf")
	write(lib+"libnvidia-mlx.so.1", "not ours") // a name that only starts like a driver library
	write("usr/bin/nvidia-smi", "elf")
	return root
}

func loadSpec(t *testing.T, name string) *specs.Spec {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var s specs.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

// golden compares s, with root written as {{ROOT}}, to testdata/name.
func golden(t *testing.T, s *specs.Spec, root, name string) {
	t.Helper()
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.ReplaceAll(string(data), root, "{{ROOT}}") + "\n"
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", path, diff)
	}
}

func TestGPUs(t *testing.T) {
	tests := []struct {
		name   string
		gpus   []string
		config func(c *Config)
		golden string
	}{
		{name: "all device nodes (default)", gpus: []string{gpu1}, golden: "gpu1-all.golden.json"},
		{name: "assigned device nodes", gpus: []string{gpu1}, config: func(c *Config) { c.DeviceNodes = DeviceNodesAssigned }, golden: "gpu1-assigned.golden.json"},
		{name: "all nodes, assigned allowed", gpus: []string{gpu2, gpu0}, config: func(c *Config) { c.DeviceNodes = DeviceNodesAllRestricted }, golden: "gpu20-allrestricted.golden.json"},
		{name: "static gpu table", gpus: []string{gpu1}, golden: "gpu1-static-table.golden.json", config: func(c *Config) {
			c.DeviceNodes = DeviceNodesAssigned
			c.ProcRoot = "/nonexistent"
			c.GPUs = []GPU{{UUID: gpu1, Minor: 2}} // another minor than the driver's: the table wins
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := driverRoot(t)
			cfg := Default()
			cfg.DriverRoot, cfg.ProcRoot = root, filepath.Join(root, "proc")
			if tt.config != nil {
				tt.config(&cfg)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			s := loadSpec(t, "container.json")
			if err := GPUs(s, tt.gpus, cfg, machine("/")); err != nil {
				t.Fatal(err)
			}
			golden(t, s, root, tt.golden)
		})
	}
}

func TestGPUsErrors(t *testing.T) {
	tests := []struct {
		name    string
		gpus    []string
		prepare func(t *testing.T, root string, cfg *Config, devs fakeDevices)
		wantErr string
	}{
		{name: "gpu of another node", gpus: []string{"GPU-bbbbbbbb-0000-0000-0000-000000000000"},
			wantErr: "gpu GPU-bbbbbbbb-0000-0000-0000-000000000000 is not on this node (it has GPU-aaaaaaaa-0000-0000-0000-000000000000, GPU-aaaaaaaa-0000-0000-0000-000000000001, GPU-aaaaaaaa-0000-0000-0000-000000000002)"},
		{name: "no driver loaded", gpus: []string{gpu0}, prepare: func(t *testing.T, root string, cfg *Config, _ fakeDevices) {
			cfg.ProcRoot = filepath.Join(root, "empty")
		}, wantErr: "is the nvidia driver loaded?"},
		{name: "no libcuda", gpus: []string{gpu0}, prepare: func(t *testing.T, root string, _ *Config, _ fakeDevices) {
			for _, n := range []string{"libcuda.so", "libcuda.so.1", "libcuda.so.580.95.05"} {
				if err := os.Remove(filepath.Join(root, "usr/lib/x86_64-linux-gnu", n)); err != nil {
					t.Fatal(err)
				}
			}
		}, wantErr: "driver library libcuda.so not found under driver root"},
		{name: "no nvidiactl", gpus: []string{gpu0}, prepare: func(t *testing.T, _ string, _ *Config, devs fakeDevices) {
			delete(devs, "/dev/nvidiactl")
		}, wantErr: "device node: stat /dev/nvidiactl"},
		{name: "no node for the assigned gpu", gpus: []string{gpu2}, prepare: func(t *testing.T, _ string, _ *Config, devs fakeDevices) {
			delete(devs, "/dev/nvidia2")
		}, wantErr: "device node: stat /dev/nvidia2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := driverRoot(t)
			cfg := Default()
			cfg.DriverRoot, cfg.ProcRoot = root, filepath.Join(root, "proc")
			devs := machine("/")
			if tt.prepare != nil {
				tt.prepare(t, root, &cfg, devs)
			}
			s := loadSpec(t, "container.json")
			before := loadSpec(t, "container.json")
			err := GPUs(s, tt.gpus, cfg, devs)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			if diff := cmp.Diff(before, s); diff != "" {
				t.Errorf("a failed patch changed the spec (-before +after):\n%s", diff)
			}
		})
	}
}

// A missing nvidia-uvm-tools or an unassigned GPU's node is no reason to fail.
func TestGPUsOptionalNodes(t *testing.T) {
	root := driverRoot(t)
	cfg := Default()
	cfg.DriverRoot, cfg.ProcRoot = root, filepath.Join(root, "proc")
	devs := machine("/")
	delete(devs, "/dev/nvidia-uvm-tools")
	delete(devs, "/dev/nvidia0")
	s := loadSpec(t, "container.json")
	if err := GPUs(s, []string{gpu1}, cfg, devs); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, d := range s.Linux.Devices {
		paths = append(paths, d.Path)
	}
	if diff := cmp.Diff([]string{"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia1", "/dev/nvidia2"}, paths); diff != "" {
		t.Errorf("device nodes (-want +got):\n%s", diff)
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	got, err := LoadConfig(filepath.Join(dir, "absent.yaml"), false)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Default(), got); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	if _, err := LoadConfig(filepath.Join(dir, "absent.yaml"), true); err == nil {
		t.Error("a settings file named explicitly but missing: no error")
	}

	got, err = LoadConfig(write("ok.yaml", "driverRoot: /run/nvidia/driver\ndeviceNodes: Assigned\ncriuTimeout: 90s\ngpus:\n- uuid: "+gpu0+"\n  minor: 3\n"), true)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.DriverRoot, want.DeviceNodes, want.CRIUTimeout.Duration = "/run/nvidia/driver", DeviceNodesAssigned, 90e9
	want.GPUs = []GPU{{UUID: gpu0, Minor: 3}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("settings (-want +got):\n%s", diff)
	}

	for name, tt := range map[string]struct{ content, wantErr string }{
		"unknown field": {"deviceNode: All\n", `unknown field "deviceNode"`},
		"bad mode":      {"deviceNodes: Some\n", `deviceNodes "Some": want All, Assigned or AllRestricted`},
		"relative root": {"driverRoot: run/nvidia\n", `driverRoot "run/nvidia": want an absolute path`},
		"bad cgroups":   {"manageCgroupsMode: hard\n", `manageCgroupsMode "hard"`},
		"bad timeout":   {"criuTimeout: soon\n", `invalid duration "soon"`},
		"bad table":     {"gpus:\n- uuid: GPU-1\n  minor: 0\n", `"GPU-1" is not a GPU UUID`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := LoadConfig(write(strings.ReplaceAll(name, " ", "-")+".yaml", tt.content), true)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestRestore(t *testing.T) {
	s := loadSpec(t, "container.json")
	Restore(s, "/run/bundle/kybernate-criu-restore.conf")
	if got := s.Annotations[AnnotationCRIUConfig]; got != "/run/bundle/kybernate-criu-restore.conf" {
		t.Errorf("annotation %s = %q", AnnotationCRIUConfig, got)
	}
	cfg := Default()
	cfg.ManageCgroupsMode = "full"
	want := "# written by containerd-shim-kybernate-v1 for a restore\ntcp-established\nfile-locks\next-unix-sk\nmanage-cgroups=full\n"
	if diff := cmp.Diff(want, string(CRIURestoreConfig(cfg))); diff != "" {
		t.Errorf("criu config (-want +got):\n%s", diff)
	}
}
