// Package sim is the node agent's --simulate mode: one agent process serves many kwok nodes,
// each with a simulated GPU machine, so that the scheduler and the whole suspend/resume flow
// can be tested on a real control plane without GPUs.
//
// A Machine is one simulated node: a go-nvml mock server (pkg/nvml/mock, the DGX H100/H200
// machines' GPU configurations) for the inventory and a cuda/fake driver over the same GPUs
// for the checkpoint engine. The pods bound to the node that have a kybernate.io/gpus
// annotation and are Running get one simulated CUDA process per assigned GPU holding
// kybernate.io/gpu-memory (default: the whole GPU); NVML reports those processes and their
// memory, and the fake driver moves them between GPU and host memory when the engine suspends
// and resumes them. Pods that finish or are deleted lose their processes.
//
// Every pod with simulated processes has a progress counter that advances only while all of
// its processes are RUNNING on their GPUs (not locked, not checkpointed): the simulated work
// that suspension must pause and resume must continue. The Fleet publishes it in the pod
// annotation AnnotationProgress.
//
// Everything here is simulated and says so: GPUNodes carry the Simulated condition, logs carry
// "simulated"=true, and the GPU UUIDs are derived from the node name.
package sim

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/cuda/fake"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/nodeagent/inventory"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// What the simulated driver reports: a release with the checkpoint API and GPU remapping
// (r580, CUDA 13.0), as on the lent H100/H200 machines.
const (
	DriverVersion     = "580.95.05"
	CUDADriverVersion = cuda.VersionRemap
	nvmlVersion       = "13.580.95.05"
)

// MaxGPUs is the most GPUs a simulated node may have (the GPUNode status holds 64).
const MaxGPUs = 64

// firstPID is the first simulated PID on each machine.
const firstPID = 10000

// families maps a token of the node's model label to the go-nvml mock GPU it is simulated
// with, most specific first.
var families = []struct {
	tokens []string
	config gpus.Config
}{
	{[]string{"H200"}, gpus.H200_SXM5_141GB},
	{[]string{"H100"}, gpus.H100_SXM5_80GB},
	{[]string{"B200"}, gpus.B200_SXM5_180GB},
	{[]string{"A100", "80GB"}, gpus.A100_SXM4_80GB},
	{[]string{"A100"}, gpus.A100_SXM4_40GB},
	{[]string{"A30"}, gpus.A30_PCIE_24GB},
}

// ErrUnknownModel is wrapped when a node's model label names no GPU the simulation has.
var ErrUnknownModel = errors.New("no simulated gpu for model")

// gpuConfig returns the mock GPU for a model label such as NVIDIA-H100-80GB-HBM3.
func gpuConfig(model string) (gpus.Config, error) {
	up := strings.ToUpper(model)
	for _, f := range families {
		match := true
		for _, tok := range f.tokens {
			match = match && strings.Contains(up, tok)
		}
		if match {
			return f.config, nil
		}
	}
	return gpus.Config{}, fmt.Errorf("%w %q: want one naming H200, H100, B200, A100 or A30", ErrUnknownModel, model)
}

// GPUUUID is the UUID of a simulated node's GPU: derived from the node's name so that it is
// the same after an agent restart, as kybernate.io/gpus annotations expect.
func GPUUUID(node string, index int) cuda.UUID {
	sum := sha256.Sum256(fmt.Appendf(nil, "kybernate-simulated-gpu/%s/%d", node, index))
	var u cuda.UUID
	copy(u[:], sum[:16])
	return u
}

// Machine is one simulated GPU node.
type Machine struct {
	node  string
	model string
	clock clock.PassiveClock
	nvml  *server.Server
	cuda  *fake.Driver
	inv   *inventory.NVML
	gpus  []simGPU

	mu sync.Mutex
	// hostMemory is the simulated host's memory with nothing parked.
	hostMemory int64
	pods       map[types.UID]*simPod
	byPID      map[int]*simPod
	// tiered lists the suspended pods whose memory the storage tiers keep below host memory.
	tiered func() []kv1.PodGPUUsage
	// ended are the suspended pods whose processes were ended after their memory went into a
	// checkpoint image (storage tiers): they get no processes until restored from it.
	ended   map[types.UID]bool
	nextPID int
	// foreign are the PIDs of simulated processes outside Kybernate (AnnotationForeignMemory).
	foreign []int
	// failing are the driver calls that fail for a pid (AnnotationFail of its pod). Its own
	// lock: the driver calls the hook that reads it while mu may be held.
	faultMu sync.Mutex
	failing map[int][]string
}

type simGPU struct {
	uuid  cuda.UUID
	total uint64
}

type simPod struct {
	ref   podmap.PodRef
	procs []simProcess
	// progress is GPU-resident time accumulated up to lastTick.
	progress time.Duration
	lastTick time.Time
}

type simProcess struct {
	pid   int
	bytes uint64
}

// NewMachine simulates a node with count GPUs of the model its label names
// (kybernate.io/gpu-model, e.g. NVIDIA-H100-80GB-HBM3). The GPUs report the label's model
// with dashes read as spaces, so that pods asking for the label's model match them, and the
// mock GPU's memory.
func NewMachine(node, model string, count int, clk clock.PassiveClock) (*Machine, error) {
	cfg, err := gpuConfig(model)
	if err != nil {
		return nil, err
	}
	if count < 1 || count > MaxGPUs {
		return nil, fmt.Errorf("simulated node %s: gpu count %d out of range 1..%d", node, count, MaxGPUs)
	}
	cfg.Name = strings.ReplaceAll(model, "-", " ")
	srv, err := server.New(
		server.WithGPUs(gpus.Multiple(count, cfg)...),
		server.WithDriverVersion(DriverVersion),
		server.WithNVMLVersion(nvmlVersion),
		server.WithCUDADriverVersion(CUDADriverVersion),
	)
	if err != nil {
		return nil, fmt.Errorf("simulated node %s: %w", node, err)
	}
	m := &Machine{
		node:    node,
		model:   model,
		clock:   clk,
		nvml:    srv,
		pods:    map[types.UID]*simPod{},
		byPID:   map[int]*simPod{},
		ended:   map[types.UID]bool{},
		nextPID: firstPID,
		failing: map[int][]string{},
	}
	devices := make([]fake.Device, count)
	for i, d := range srv.Devices {
		dev := d.(*server.Device)
		u := GPUUUID(node, i)
		dev.UUID = u.String()
		total := dev.MemoryInfo.Total
		m.gpus = append(m.gpus, simGPU{uuid: u, total: total})
		devices[i] = fake.Device{UUID: u, Name: cfg.Name, TotalMem: total}
		dev.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return m.residentProcesses(u), nvml.SUCCESS }
		dev.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
			used, _ := m.cuda.UsedMem(u)
			return nvml.Memory{Total: total, Used: used, Free: total - used}, nvml.SUCCESS
		}
	}
	m.cuda = fake.New(devices...)
	m.cuda.SetDriverVersion(CUDADriverVersion)
	m.cuda.SetHook(m.injectFault)
	if err := m.cuda.Init(); err != nil {
		return nil, fmt.Errorf("simulated node %s: %w", node, err)
	}
	if m.inv, err = inventory.Open(srv); err != nil {
		return nil, fmt.Errorf("simulated node %s: %w", node, err)
	}
	return m, nil
}

// Node is the machine's node name.
func (m *Machine) Node() string { return m.node }

// Inventory reads the machine's GPUs through NVML (the mock).
func (m *Machine) Inventory() inventory.Source { return m.inv }

// Driver is the machine's simulated CUDA driver, for the checkpoint engine.
func (m *Machine) Driver() *fake.Driver { return m.cuda }

// GPUs are the UUIDs of the machine's GPUs in index order.
func (m *Machine) GPUs() []cuda.UUID {
	out := make([]cuda.UUID, len(m.gpus))
	for i, g := range m.gpus {
		out[i] = g.uuid
	}
	return out
}

// residentProcesses lists the processes with memory on gpu, as NVML does.
func (m *Machine) residentProcesses(gpu cuda.UUID) []nvml.ProcessInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []nvml.ProcessInfo
	pids := slices.Collect(maps.Keys(m.byPID))
	for _, pid := range append(pids, m.foreign...) {
		p, ok := m.cuda.Process(pid)
		if ok && p.GPU == gpu && p.State != cuda.ProcessStateCheckpointed {
			out = append(out, nvml.ProcessInfo{Pid: uint32(pid), UsedGpuMemory: p.VRAM})
		}
	}
	slices.SortFunc(out, func(a, b nvml.ProcessInfo) int { return int(a.Pid) - int(b.Pid) })
	return out
}

// PodOfPID maps a simulated process to its pod.
func (m *Machine) PodOfPID(_ context.Context, pid int32) (podmap.PodRef, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.byPID[int(pid)]
	if !ok {
		return podmap.PodRef{}, fmt.Errorf("simulated pid %d: %w", pid, podmap.ErrNotInPod)
	}
	return p.ref, nil
}

// Process is a simulated CUDA process of a pod.
type Process struct {
	PID int
	// GPU the process's memory is on, or was on before it was checkpointed.
	GPU   cuda.UUID
	Bytes int64
	State cuda.ProcessState
}

// ProcessesOf returns the simulated processes of a pod, in PID order.
func (m *Machine) ProcessesOf(uid types.UID) []Process {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.pods[uid]
	if !ok {
		return nil
	}
	out := make([]Process, 0, len(p.procs))
	for _, sp := range p.procs {
		fp, ok := m.cuda.Process(sp.pid)
		if !ok {
			continue
		}
		out = append(out, Process{PID: sp.pid, GPU: fp.GPU, Bytes: int64(fp.VRAM), State: fp.State})
	}
	return out
}

// SuspendedPods lists the pods whose processes are all checkpointed: their memory is parked in
// host memory.
func (m *Machine) SuspendedPods() []kv1.PodGPUUsage {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []kv1.PodGPUUsage
	for _, p := range m.pods {
		u := kv1.PodGPUUsage{Namespace: p.ref.Namespace, Name: p.ref.Name, UID: string(p.ref.UID), Residency: kv1.Suspended}
		all := len(p.procs) > 0
		for _, sp := range p.procs {
			fp, ok := m.cuda.Process(sp.pid)
			if !ok || fp.State != cuda.ProcessStateCheckpointed {
				all = false
				break
			}
			u.Bytes += int64(fp.HostBytes)
			u.GPUs = append(u.GPUs, fp.GPU.String())
		}
		if all {
			out = append(out, u)
		}
	}
	if m.tiered != nil {
		out = append(out, m.tiered()...)
	}
	return out
}

// SetTiered sets where SuspendedPods finds the suspended pods whose memory the storage tiers
// moved out of host memory (they have no processes here). Call it before the machine is used.
func (m *Machine) SetTiered(fn func() []kv1.PodGPUUsage) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tiered = fn
}

// SetHostMemory sets the simulated host's memory (MemAvailable with nothing parked).
func (m *Machine) SetHostMemory(bytes int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.hostMemory = bytes
}

// HostMemory is the simulated host's memory.
func (m *Machine) HostMemory() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.hostMemory
}

// MemAvailable is the simulated host's available memory: its memory less the GPU memory
// parked in it, as a real host's MemAvailable drops by what suspended processes hold.
func (m *Machine) MemAvailable() (int64, error) {
	parked := m.ParkedBytes()
	m.mu.Lock()
	defer m.mu.Unlock()
	return max(m.hostMemory-parked, 0), nil
}

// ParkedBytes is the GPU memory held in host memory by checkpointed processes.
func (m *Machine) ParkedBytes() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	for pid := range m.byPID {
		if fp, ok := m.cuda.Process(pid); ok {
			n += int64(fp.HostBytes)
		}
	}
	return n
}

// podProcesses says which simulated processes a pod should have: one per assigned GPU of this
// machine, holding the pod's kybernate.io/gpu-memory or the whole GPU. Pods that are not
// Running, are being deleted or have no GPUs assigned have none.
func (m *Machine) podProcesses(pod *v1.Pod) ([]cuda.UUID, []uint64, error) {
	if pod.Status.Phase != v1.PodRunning || pod.DeletionTimestamp != nil {
		return nil, nil, nil
	}
	assigned, ok, err := gpupod.PodGPUs(pod)
	if err != nil {
		return nil, nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	if !ok {
		return nil, nil, nil
	}
	per, err := gpupod.GPUMemory(pod)
	if err != nil {
		return nil, nil, fmt.Errorf("pod %s/%s: annotation %s=%q is not a positive quantity", pod.Namespace, pod.Name, kv1.AnnotationGPUMemory, pod.Annotations[kv1.AnnotationGPUMemory])
	}
	var uuids []cuda.UUID
	var bytes []uint64
	for _, part := range assigned {
		u, err := cuda.ParseUUID(part)
		if err != nil {
			return nil, nil, fmt.Errorf("pod %s/%s: annotation %s: %w", pod.Namespace, pod.Name, kv1.AnnotationGPUs, err)
		}
		i := slices.IndexFunc(m.gpus, func(g simGPU) bool { return g.uuid == u })
		if i < 0 {
			return nil, nil, fmt.Errorf("pod %s/%s: gpu %s of annotation %s is not a gpu of node %s", pod.Namespace, pod.Name, u, kv1.AnnotationGPUs, m.node)
		}
		b := m.gpus[i].total
		if per > 0 && uint64(per) < b {
			b = uint64(per)
		}
		uuids = append(uuids, u)
		bytes = append(bytes, b)
	}
	return uuids, bytes, nil
}

// SyncPods makes the machine's processes those of the given pods (the pods bound to the node):
// new pods get processes, pods that are gone or no longer Running lose theirs. Pods whose
// kybernate.io/state is Suspended (an agent restart) get theirs checkpointed at once. It
// reports whether anything changed and the pods it could not simulate, with why.
func (m *Machine) SyncPods(pods []*v1.Pod) (bool, []error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock.Now()
	changed := false
	var errs []error

	want := map[types.UID]bool{}
	type newPod struct {
		pod   *v1.Pod
		gpus  []cuda.UUID
		bytes []uint64
	}
	var add []newPod
	faults := map[types.UID][]string{}
	for _, pod := range pods {
		gpus, bytes, err := m.podProcesses(pod)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(gpus) == 0 {
			continue
		}
		if restoring(pod) || m.ended[pod.UID] {
			// Its processes come from its image, made by Restore; until then it has none.
			if _, ok := m.pods[pod.UID]; ok {
				want[pod.UID] = true
			}
			continue
		}
		if calls, err := failingCalls(pod); err != nil {
			errs = append(errs, err)
		} else if len(calls) > 0 {
			faults[pod.UID] = calls
		}
		want[pod.UID] = true
		if _, ok := m.pods[pod.UID]; !ok {
			add = append(add, newPod{pod: pod, gpus: gpus, bytes: bytes})
		}
	}
	for uid := range m.ended {
		if !slices.ContainsFunc(pods, func(p *v1.Pod) bool { return p.UID == uid && suspended(p) }) {
			delete(m.ended, uid)
		}
	}
	for uid, p := range m.pods {
		if want[uid] {
			continue
		}
		for _, sp := range p.procs {
			m.cuda.RemoveProcess(sp.pid)
			delete(m.byPID, sp.pid)
		}
		delete(m.pods, uid)
		changed = true
	}
	// Suspended pods first: their memory leaves the GPUs at once, making room for the rest.
	slices.SortStableFunc(add, func(a, b newPod) int {
		return boolRank(!suspended(a.pod)) - boolRank(!suspended(b.pod))
	})
	for _, np := range add {
		p := &simPod{
			ref:      podmap.PodRef{Namespace: np.pod.Namespace, Name: np.pod.Name, UID: np.pod.UID},
			progress: ProgressOf(np.pod),
			lastTick: now,
		}
		if err := m.start(p, np.gpus, np.bytes, suspended(np.pod)); err != nil {
			errs = append(errs, fmt.Errorf("pod %s/%s: %w", np.pod.Namespace, np.pod.Name, err))
			continue
		}
		m.pods[np.pod.UID] = p
		changed = true
	}
	m.faultMu.Lock()
	defer m.faultMu.Unlock()
	clear(m.failing)
	for uid, calls := range faults {
		if p, ok := m.pods[uid]; ok {
			for _, sp := range p.procs {
				m.failing[sp.pid] = calls
			}
		}
	}
	return changed, errs
}

// AnnotationFail (simulation only) names driver calls that fail for the pod's simulated
// processes, comma separated: Lock, Checkpoint, Restore, Unlock; and steps of the simulated
// checkpoint images: Dump (writing the image fails), CorruptImage (the image is damaged after
// it was written and verified), RestoreImage (restoring from an image fails). Tests use it to
// show what a failed suspend, resume or migration does; real pods never have it.
const AnnotationFail = kv1.AnnotationSimulatedFail

var faultCalls = map[string]string{
	"Lock": fake.CallLock, "Checkpoint": fake.CallCheckpoint, "Restore": fake.CallRestore, "Unlock": fake.CallUnlock,
}

func failingCalls(pod *v1.Pod) ([]string, error) {
	s := strings.TrimSpace(pod.Annotations[AnnotationFail])
	if s == "" {
		return nil, nil
	}
	var calls []string
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		if slices.Contains(imageFaults, name) {
			continue
		}
		call, ok := faultCalls[name]
		if !ok {
			return nil, fmt.Errorf("pod %s/%s: annotation %s=%q: %q is not one of Lock, Checkpoint, Restore, Unlock, %s", pod.Namespace, pod.Name, AnnotationFail, s, name, strings.Join(imageFaults, ", "))
		}
		calls = append(calls, call)
	}
	return calls, nil
}

// injectFault is the fake driver's hook: the calls AnnotationFail names fail with
// CUDA_ERROR_UNKNOWN, as a driver bug would.
func (m *Machine) injectFault(call string, pid int) error {
	m.faultMu.Lock()
	defer m.faultMu.Unlock()
	if slices.Contains(m.failing[pid], call) {
		return cuda.NewError(call, cuda.ErrorUnknown)
	}
	return nil
}

// start creates a pod's processes, all or none; m.mu must be held.
func (m *Machine) start(p *simPod, gpus []cuda.UUID, bytes []uint64, parked bool) error {
	for i, u := range gpus {
		pid := m.nextPID
		m.nextPID++
		err := m.cuda.AddProcess(pid, u, bytes[i])
		if err == nil && parked {
			err = errors.Join(m.cuda.CheckpointProcessLock(pid, 0), m.cuda.CheckpointProcessCheckpoint(pid))
		}
		if err != nil {
			m.cuda.RemoveProcess(pid)
			for _, sp := range p.procs {
				m.cuda.RemoveProcess(sp.pid)
				delete(m.byPID, sp.pid)
			}
			p.procs = nil
			return fmt.Errorf("simulated process on gpu %s: %w", u, err)
		}
		p.procs = append(p.procs, simProcess{pid: pid, bytes: bytes[i]})
		m.byPID[pid] = p
	}
	return nil
}

func suspended(pod *v1.Pod) bool {
	switch kv1.PodGPUState(pod.Annotations[kv1.AnnotationState]) {
	case kv1.PodSuspended, kv1.PodResuming, kv1.PodCheckpointing, kv1.PodCheckpointed:
		return true
	}
	return false
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Tick advances the progress of every pod whose processes all ran on their GPUs since the last
// tick. Call it often (the Fleet does every ProgressTick) and before reading progress.
func (m *Machine) Tick() {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock.Now()
	for _, p := range m.pods {
		if m.running(p) {
			p.progress += now.Sub(p.lastTick)
		}
		p.lastTick = now
	}
}

// running reports whether all of a pod's processes are RUNNING; m.mu must be held.
func (m *Machine) running(p *simPod) bool {
	for _, sp := range p.procs {
		fp, ok := m.cuda.Process(sp.pid)
		if !ok || fp.State != cuda.ProcessStateRunning {
			return false
		}
	}
	return len(p.procs) > 0
}

// Progress returns the pods' GPU-resident time as of the last Tick.
func (m *Machine) Progress() map[podmap.PodRef]time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[podmap.PodRef]time.Duration, len(m.pods))
	for _, p := range m.pods {
		out[p.ref] = p.progress
	}
	return out
}
