// Package spec holds what the shim changes in a container's OCI spec (the bundle's config.json)
// before runc sees it: the GPUs of kybernate.io/gpus (device nodes, device cgroup rules, driver
// library mounts, CUDA_VISIBLE_DEVICES) and the CRIU settings of a restore from
// kybernate.io/restore-from. It touches no containerd code, so it is tested on testdata specs
// with a fake driver root.
package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"sigs.k8s.io/yaml"
)

// DeviceNodes says which /dev/nvidiaN nodes a GPU container gets.
type DeviceNodes string

const (
	// DeviceNodesAll gives every GPU's node of the host and allows them all in the device
	// cgroup; CUDA_VISIBLE_DEVICES picks the assigned GPUs. The default: the only setting
	// under which the driver restores a container's memory onto another GPU of the node
	// (measured on 2x H200, driver 580: test/gpu/results/2026-11-23-h200x2-container.md). The
	// price is isolation: a process that ignores CUDA_VISIBLE_DEVICES can open the other GPUs.
	DeviceNodesAll DeviceNodes = "All"
	// DeviceNodesAssigned gives only the assigned GPUs' nodes (what the NVIDIA container
	// toolkit does). Strict isolation; the driver refuses restores onto another GPU
	// (CUDA_ERROR_INVALID_VALUE), measured.
	DeviceNodesAssigned DeviceNodes = "Assigned"
	// DeviceNodesAllRestricted creates every GPU's node but allows only the assigned ones in
	// the device cgroup: paths stay the same everywhere, other GPUs cannot be opened; restores
	// onto another GPU are refused as with Assigned, measured.
	DeviceNodesAllRestricted DeviceNodes = "AllRestricted"
)

// CgroupsModeIgnore is the shim's manage-cgroups mode for restores: CRIU leaves cgroups alone,
// so the restored processes stay in the cgroup runc put CRIU into, the new container's. With
// CRIU's own default, soft, a restore on cgroup v2 put the processes back into the cgroup they
// were dumped from, the old container's (seen on the GPU machine, test/gpu/results
// 2026-11-23-h200x2-container.md): limits and the pod of the processes were the old ones.
const CgroupsModeIgnore = "ignore"

// DefaultConfigFile is where the shim reads its settings; KYBERNATE_SHIM_CONFIG overrides it.
const DefaultConfigFile = "/etc/kybernate/shim.yaml"

// ConfigEnv names the environment variable with the settings file's path. Shims inherit
// containerd's environment.
const ConfigEnv = "KYBERNATE_SHIM_CONFIG"

// Config are the shim's settings, from a YAML (or JSON) file. Every field has a default.
type Config struct {
	// DriverRoot is where the NVIDIA driver's user-space files are on the host: "/" for a
	// driver installed on the host, /run/nvidia/driver with the GPU operator's driver
	// container.
	DriverRoot string `json:"driverRoot,omitempty"`
	// DevRoot is where the /dev/nvidia* nodes are on the host.
	DevRoot string `json:"devRoot,omitempty"`
	// ProcRoot is the host's /proc; the driver's GPU table is ProcRoot/driver/nvidia/gpus.
	ProcRoot string `json:"procRoot,omitempty"`
	// DeviceNodes is All (default), Assigned or AllRestricted.
	DeviceNodes DeviceNodes `json:"deviceNodes,omitempty"`
	// GPUs, when set, is the table from GPU UUID to device minor number (/dev/nvidiaN); when
	// empty the table is read from the driver (ProcRoot/driver/nvidia/gpus/*/information).
	GPUs []GPU `json:"gpus,omitempty"`
	// Libraries are the driver libraries mounted into GPU containers, by the name before
	// ".so". libcuda is required; the others are mounted when the driver has them.
	Libraries []string `json:"libraries,omitempty"`
	// Binaries are the driver's programs mounted into GPU containers when present.
	Binaries []string `json:"binaries,omitempty"`
	// ContainerLibraryDir is where the libraries appear in the container; it is added to
	// LD_LIBRARY_PATH. CUDA images have /usr/local/nvidia/lib64 on it already.
	ContainerLibraryDir string `json:"containerLibraryDir,omitempty"`
	// ContainerBinaryDir is where the binaries appear in the container.
	ContainerBinaryDir string `json:"containerBinaryDir,omitempty"`
	// ManageCgroupsMode is CRIU's manage-cgroups mode for restores: ignore (default), soft,
	// full or strict.
	ManageCgroupsMode string `json:"manageCgroupsMode,omitempty"`
	// CRIUTimeout bounds every checkpoint and restore (10m): a CRIU that hangs fails the
	// call instead of holding it forever.
	CRIUTimeout Duration `json:"criuTimeout,omitempty"`
	// AgentSocket is the node agent's gRPC socket. A restore from an image with GPU memory
	// calls the agent's Restore there after runc restore: the agent puts the memory onto the
	// container's GPUs.
	AgentSocket string `json:"agentSocket,omitempty"`
	// AgentTimeout bounds that call (5m); when it fails or runs out, the container is stopped.
	AgentTimeout Duration `json:"agentTimeout,omitempty"`
	// CheckpointDir is the node agent's --checkpoint-dir (/var/lib/kybernate/images): a
	// container restores only from an image of its pod's namespace under it
	// (<checkpointDir>/<namespace>/...), reached without symbolic links.
	CheckpointDir string `json:"checkpointDir,omitempty"`
}

// Duration is a time.Duration written as a Go duration string ("90s", "10m").
type Duration struct {
	time.Duration
}

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string such as \"90s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// GPU is one row of the UUID -> device node table.
type GPU struct {
	UUID  string `json:"uuid"`
	Minor int    `json:"minor"`
}

// Default returns the defaults.
func Default() Config {
	c := Config{}
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	if c.DriverRoot == "" {
		c.DriverRoot = "/"
	}
	if c.DevRoot == "" {
		c.DevRoot = "/"
	}
	if c.ProcRoot == "" {
		c.ProcRoot = "/proc"
	}
	if c.DeviceNodes == "" {
		c.DeviceNodes = DeviceNodesAll
	}
	if c.Libraries == nil {
		c.Libraries = []string{
			"libcuda", "libnvidia-ml", "libnvidia-ptxjitcompiler", "libnvidia-nvvm",
			"libnvidia-gpucomp", "libcudadebugger", "libnvidia-allocator", "libnvidia-cfg",
			"libnvidia-opencl", "libnvidia-pkcs11", "libnvidia-pkcs11-openssl3",
		}
	}
	if c.Binaries == nil {
		c.Binaries = []string{"nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control", "nvidia-cuda-mps-server"}
	}
	if c.ContainerLibraryDir == "" {
		c.ContainerLibraryDir = "/usr/local/nvidia/lib64"
	}
	if c.ContainerBinaryDir == "" {
		c.ContainerBinaryDir = "/usr/local/nvidia/bin"
	}
	if c.ManageCgroupsMode == "" {
		c.ManageCgroupsMode = CgroupsModeIgnore
	}
	if c.CRIUTimeout.Duration == 0 {
		c.CRIUTimeout.Duration = 10 * time.Minute
	}
	if c.AgentSocket == "" {
		c.AgentSocket = DefaultAgentSocket
	}
	if c.AgentTimeout.Duration == 0 {
		c.AgentTimeout.Duration = 5 * time.Minute
	}
	if c.CheckpointDir == "" {
		c.CheckpointDir = DefaultCheckpointDir
	}
}

// DefaultCheckpointDir is the folder of checkpoint images the agent's manifests give it
// (--checkpoint-dir).
const DefaultCheckpointDir = "/var/lib/kybernate/images"

// DefaultAgentSocket is the node agent's default --socket.
const DefaultAgentSocket = "/run/kybernate/agent.sock"

// Validate checks the settings.
func (c *Config) Validate() error {
	var errs []error
	switch c.DeviceNodes {
	case DeviceNodesAll, DeviceNodesAssigned, DeviceNodesAllRestricted:
	default:
		errs = append(errs, fmt.Errorf("deviceNodes %q: want %s, %s or %s", c.DeviceNodes, DeviceNodesAll, DeviceNodesAssigned, DeviceNodesAllRestricted))
	}
	switch c.ManageCgroupsMode {
	case "soft", "full", "strict", "ignore":
	default:
		errs = append(errs, fmt.Errorf("manageCgroupsMode %q: want soft, full, strict or ignore", c.ManageCgroupsMode))
	}
	for name, p := range map[string]string{"driverRoot": c.DriverRoot, "devRoot": c.DevRoot, "procRoot": c.ProcRoot,
		"containerLibraryDir": c.ContainerLibraryDir, "containerBinaryDir": c.ContainerBinaryDir, "agentSocket": c.AgentSocket,
		"checkpointDir": c.CheckpointDir} {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("%s %q: want an absolute path", name, p))
		}
	}
	if c.CRIUTimeout.Duration < 0 {
		errs = append(errs, fmt.Errorf("criuTimeout %s: want a positive duration", c.CRIUTimeout.Duration))
	}
	if c.AgentTimeout.Duration < 0 {
		errs = append(errs, fmt.Errorf("agentTimeout %s: want a positive duration", c.AgentTimeout.Duration))
	}
	seen := map[string]bool{}
	for _, g := range c.GPUs {
		if err := validUUID(g.UUID); err != nil {
			errs = append(errs, fmt.Errorf("gpus: %w", err))
		}
		if g.Minor < 0 || g.Minor > 254 {
			errs = append(errs, fmt.Errorf("gpus: %s: minor %d out of range 0-254", g.UUID, g.Minor))
		}
		if seen[g.UUID] {
			errs = append(errs, fmt.Errorf("gpus: %s listed twice", g.UUID))
		}
		seen[g.UUID] = true
	}
	return errors.Join(errs...)
}

// LoadConfig reads the settings from path, with defaults for what it does not set. A missing
// file at the default path gives the defaults; a missing file named explicitly is an error.
func LoadConfig(path string, explicit bool) (Config, error) {
	var c Config
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist) && !explicit:
	case err != nil:
		return Config{}, fmt.Errorf("reading shim settings: %w", err)
	default:
		if err := yaml.UnmarshalStrict(data, &c); err != nil {
			return Config{}, fmt.Errorf("shim settings %s: %w", path, err)
		}
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("shim settings %s: %w", path, err)
	}
	return c, nil
}

// LoadConfigFromEnv reads the settings from $KYBERNATE_SHIM_CONFIG or DefaultConfigFile.
func LoadConfigFromEnv() (Config, error) {
	if p := os.Getenv(ConfigEnv); p != "" {
		return LoadConfig(p, true)
	}
	return LoadConfig(DefaultConfigFile, false)
}
