package spec

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Environment variables set in GPU containers.
const (
	EnvCUDAVisibleDevices   = "CUDA_VISIBLE_DEVICES"
	EnvNVIDIAVisibleDevices = "NVIDIA_VISIBLE_DEVICES"
	EnvLDLibraryPath        = "LD_LIBRARY_PATH"
)

// Device is a character device node on the host.
type Device struct {
	Major, Minor int64
}

// Devices reads device nodes on the host; a fake in tests.
type Devices interface {
	// Device returns the character device at path; an error wrapping os.ErrNotExist when
	// there is none.
	Device(path string) (Device, error)
}

// HostDevices reads device nodes with stat(2).
type HostDevices struct{}

var _ Devices = HostDevices{}

// Device stats path.
func (HostDevices) Device(path string) (Device, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Device{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return Device{}, fmt.Errorf("%s is not a character device", path)
	}
	return Device{Major: int64(unix.Major(st.Rdev)), Minor: int64(unix.Minor(st.Rdev))}, nil
}

var uuidPattern = regexp.MustCompile(`^GPU-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

func validUUID(s string) error {
	if !uuidPattern.MatchString(s) {
		return fmt.Errorf("%q is not a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)", s)
	}
	return nil
}

// DriverGPUs reads the driver's table of GPUs, procRoot/driver/nvidia/gpus/*/information
// ("GPU UUID:" and "Device Minor:" lines): what /dev/nvidiaN each GPU is. NVML is not used in
// the shim: it would load the driver's library into every shim, and containerd's shim code
// binds symbols eagerly, which breaks go-nvml's lazily bound ones.
func DriverGPUs(procRoot string) ([]GPU, error) {
	files, err := filepath.Glob(filepath.Join(procRoot, "driver", "nvidia", "gpus", "*", "information"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no gpu in %s: is the nvidia driver loaded?", filepath.Join(procRoot, "driver", "nvidia", "gpus"))
	}
	var out []GPU
	for _, f := range files {
		g, err := readInformation(f)
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b GPU) int { return a.Minor - b.Minor })
	return out, nil
}

func readInformation(path string) (GPU, error) {
	f, err := os.Open(path)
	if err != nil {
		return GPU{}, err
	}
	defer f.Close()
	g := GPU{Minor: -1}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch strings.TrimSpace(key) {
		case "GPU UUID":
			g.UUID = value
		case "Device Minor":
			if n, err := strconv.Atoi(value); err == nil {
				g.Minor = n
			}
		}
	}
	if err := sc.Err(); err != nil {
		return GPU{}, fmt.Errorf("reading %s: %w", path, err)
	}
	if validUUID(g.UUID) != nil || g.Minor < 0 {
		return GPU{}, fmt.Errorf("%s: no GPU UUID and Device Minor (uuid %q, minor %d)", path, g.UUID, g.Minor)
	}
	return g, nil
}

// GPUs exposes the GPUs uuids (from kybernate.io/gpus) to the container of s: device nodes
// and their cgroup rules (which ones: cfg.DeviceNodes), the driver's libraries and programs
// as read-only bind mounts, CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES. Nothing is
// changed when it fails.
func GPUs(s *specs.Spec, uuids []string, cfg Config, devs Devices) error {
	table := cfg.GPUs
	if len(table) == 0 {
		var err error
		if table, err = DriverGPUs(cfg.ProcRoot); err != nil {
			return fmt.Errorf("gpu table: %w", err)
		}
	}
	minorOf := map[string]int{}
	for _, g := range table {
		minorOf[strings.ToLower(g.UUID)] = g.Minor
	}
	assigned := map[int]bool{}
	for _, u := range uuids {
		m, ok := minorOf[strings.ToLower(u)]
		if !ok {
			known := make([]string, 0, len(table))
			for _, g := range table {
				known = append(known, g.UUID)
			}
			return fmt.Errorf("gpu %s is not on this node (it has %s)", u, strings.Join(known, ", "))
		}
		assigned[m] = true
	}

	type node struct {
		name     string
		required bool
		allowed  bool
	}
	nodes := []node{{"nvidiactl", true, true}, {"nvidia-uvm", true, true}, {"nvidia-uvm-tools", false, true}}
	for _, g := range table {
		own := assigned[g.Minor]
		if cfg.DeviceNodes == DeviceNodesAssigned && !own {
			continue
		}
		nodes = append(nodes, node{name: fmt.Sprintf("nvidia%d", g.Minor), required: own, allowed: own || cfg.DeviceNodes == DeviceNodesAll})
	}

	var devices []specs.LinuxDevice
	var rules []specs.LinuxDeviceCgroup
	for _, n := range nodes {
		path := "/dev/" + n.name
		d, err := devs.Device(filepath.Join(cfg.DevRoot, path))
		if err != nil {
			if !n.required && errors.Is(err, os.ErrNotExist) {
				continue
			}
			return fmt.Errorf("device node: %w", err)
		}
		mode := os.FileMode(0o666)
		uid, gid := uint32(0), uint32(0)
		devices = append(devices, specs.LinuxDevice{Path: path, Type: "c", Major: d.Major, Minor: d.Minor, FileMode: &mode, UID: &uid, GID: &gid})
		if n.allowed {
			major, minor := d.Major, d.Minor
			rules = append(rules, specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: &major, Minor: &minor, Access: "rwm"})
		}
	}

	mounts, err := driverMounts(cfg)
	if err != nil {
		return err
	}

	if s.Linux == nil {
		s.Linux = &specs.Linux{}
	}
	for _, d := range devices {
		s.Linux.Devices = slices.DeleteFunc(s.Linux.Devices, func(o specs.LinuxDevice) bool { return o.Path == d.Path })
	}
	s.Linux.Devices = append(s.Linux.Devices, devices...)
	if len(rules) > 0 {
		if s.Linux.Resources == nil {
			s.Linux.Resources = &specs.LinuxResources{}
		}
		s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, rules...)
	}
	for _, m := range mounts {
		s.Mounts = slices.DeleteFunc(s.Mounts, func(o specs.Mount) bool { return o.Destination == m.Destination })
	}
	s.Mounts = append(s.Mounts, mounts...)
	if s.Process == nil {
		s.Process = &specs.Process{}
	}
	list := strings.Join(uuids, ",")
	s.Process.Env = setEnv(s.Process.Env, EnvCUDAVisibleDevices, list)
	s.Process.Env = setEnv(s.Process.Env, EnvNVIDIAVisibleDevices, list)
	s.Process.Env = appendPath(s.Process.Env, EnvLDLibraryPath, cfg.ContainerLibraryDir)
	return nil
}

// Folders under the driver root the driver's files are looked for in, first match wins.
var (
	libraryDirs = []string{"usr/lib/x86_64-linux-gnu", "usr/lib64", "lib/x86_64-linux-gnu", "lib64", "usr/lib", "lib"}
	binaryDirs  = []string{"usr/bin", "usr/sbin", "bin", "sbin"}
)

// driverMounts finds the driver's libraries and programs under cfg.DriverRoot. Each library
// file and each of its symlinks (libcuda.so, libcuda.so.1 -> libcuda.so.580.95.05) becomes a
// read-only bind mount of the real file under cfg.ContainerLibraryDir.
func driverMounts(cfg Config) ([]specs.Mount, error) {
	var out []specs.Mount
	for _, lib := range cfg.Libraries {
		found := false
		for _, dir := range libraryDirs {
			matches, err := filepath.Glob(filepath.Join(cfg.DriverRoot, dir, lib+".so*"))
			if err != nil {
				return nil, err
			}
			for _, m := range matches {
				src, err := resolve(cfg.DriverRoot, m)
				if err != nil {
					return nil, fmt.Errorf("driver library %s: %w", m, err)
				}
				out = append(out, bindMount(src, filepath.Join(cfg.ContainerLibraryDir, filepath.Base(m))))
				found = true
			}
			if found {
				break
			}
		}
		if !found && lib == "libcuda" {
			return nil, fmt.Errorf("driver library libcuda.so not found under driver root %s (in %s)", cfg.DriverRoot, strings.Join(libraryDirs, ", "))
		}
	}
	for _, bin := range cfg.Binaries {
		for _, dir := range binaryDirs {
			p := filepath.Join(cfg.DriverRoot, dir, bin)
			if _, err := os.Stat(p); err != nil {
				continue
			}
			src, err := resolve(cfg.DriverRoot, p)
			if err != nil {
				return nil, fmt.Errorf("driver program %s: %w", p, err)
			}
			out = append(out, bindMount(src, filepath.Join(cfg.ContainerBinaryDir, bin)))
			break
		}
	}
	return out, nil
}

func bindMount(src, dst string) specs.Mount {
	return specs.Mount{Destination: dst, Type: "bind", Source: src, Options: []string{"bind", "ro", "nosuid", "nodev"}}
}

// resolve follows the symlinks of path, reading absolute link targets inside root (the
// driver root is a host folder that may hold a whole driver file system).
func resolve(root, path string) (string, error) {
	for range 16 {
		target, err := os.Readlink(path)
		if errors.Is(err, unix.EINVAL) {
			return path, nil
		}
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			path = filepath.Join(root, target)
		} else {
			path = filepath.Join(filepath.Dir(path), target)
		}
	}
	return "", fmt.Errorf("%s: too many levels of symbolic links", path)
}

// setEnv sets key=value in env, replacing earlier values.
func setEnv(env []string, key, value string) []string {
	env = slices.DeleteFunc(env, func(e string) bool { return strings.HasPrefix(e, key+"=") })
	return append(env, key+"="+value)
}

// appendPath adds dir to the path list in key unless it is on it already.
func appendPath(env []string, key, dir string) []string {
	for i, e := range env {
		v, ok := strings.CutPrefix(e, key+"=")
		if !ok {
			continue
		}
		if slices.Contains(filepath.SplitList(v), dir) {
			return env
		}
		if v == "" {
			env[i] = key + "=" + dir
		} else {
			env[i] = key + "=" + v + ":" + dir
		}
		return env
	}
	return append(env, key+"="+dir)
}
