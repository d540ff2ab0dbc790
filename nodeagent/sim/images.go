package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/controller"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// RecordFile is the file of a simulated checkpoint image that holds what the simulation needs
// to continue the pod on another node. The image is in the real format (metadata.json with
// the SHA-256 of every file), so restores verify it as they verify real ones; it holds no
// process.
const RecordFile = "simulated-process.json"

// Faults of simulated checkpoint images (AnnotationFail).
const (
	FaultDump         = "Dump"
	FaultCorruptImage = "CorruptImage"
	FaultRestoreImage = "RestoreImage"
)

var imageFaults = []string{FaultDump, FaultCorruptImage, FaultRestoreImage}

// Record is RecordFile.
type Record struct {
	// Simulated is always true: nothing of a real process is in the image.
	Simulated bool   `json:"simulated"`
	Note      string `json:"note"`
	// Progress is the pod's progress counter when it was checkpointed, in whole seconds (as
	// AnnotationProgress).
	Progress int64 `json:"progress"`
	// Model and DriverVersion of the machine that wrote it.
	Model         string `json:"model"`
	DriverVersion string `json:"driverVersion"`
	// Processes are the pod's simulated processes: the GPU each was on and its memory.
	Processes []RecordProcess `json:"processes"`
}

// RecordProcess is one simulated process of a Record.
type RecordProcess struct {
	GPU   string `json:"gpu"`
	Bytes uint64 `json:"bytes"`
}

// Images writes and restores the simulated checkpoint images of one Machine: a checkpoint
// takes as long as writing the pod's parked memory at WriteRate, a restore starts the pod's
// processes checkpointed from the record and has the engine put them onto their GPUs, at the
// driver's simulated restore rate.
type Images struct {
	Machine *Machine
	Engine  *engine.Engine
	// WriteRate is the bytes per second an image is written at; 0 is instant.
	WriteRate float64
	Clock     clock.Clock
}

var _ controller.Images = (*Images)(nil)

// Checkpoint writes the simulated image of a suspended pod.
func (im *Images) Checkpoint(ctx context.Context, pod *v1.Pod, dir string) (controller.ImageResult, error) {
	logger := klog.FromContext(ctx).WithValues("pod", klog.KObj(pod), "image", dir, "simulated", true)
	faults := podImageFaults(pod)
	start := im.Clock.Now()
	procs := im.Machine.ProcessesOf(pod.UID)
	if len(procs) == 0 || slices.ContainsFunc(procs, func(p Process) bool { return p.State != cuda.ProcessStateCheckpointed }) {
		return controller.ImageResult{}, &controller.ImageError{Cause: "WrongState", RolledBack: true,
			Err: fmt.Errorf("simulated pod %s/%s is not suspended: only suspended pods are checkpointed", pod.Namespace, pod.Name)}
	}
	if slices.Contains(faults, FaultDump) {
		return controller.ImageResult{}, &controller.ImageError{Cause: "DumpFailed", RolledBack: true,
			Err: fmt.Errorf("simulated criu dump failed (fault injected by %s=%s); no image written", AnnotationFail, FaultDump)}
	}
	rec := Record{Simulated: true, Note: "written by kybernate-agent --simulate: no process state, only the simulated progress counter",
		Model: im.Machine.model, DriverVersion: DriverVersion}
	im.Machine.Tick()
	rec.Progress = int64(im.Machine.progressOf(pod.UID) / time.Second)
	var vram int64
	var gpus []string
	for _, p := range procs {
		rec.Processes = append(rec.Processes, RecordProcess{GPU: p.GPU.String(), Bytes: uint64(p.Bytes)})
		gpus = append(gpus, p.GPU.String())
		vram += p.Bytes
	}
	if d := Duration(uint64(vram), im.WriteRate); d > 0 {
		select {
		case <-im.Clock.After(d):
		case <-ctx.Done():
			return controller.ImageResult{}, ctx.Err()
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return controller.ImageResult{}, &controller.ImageError{Cause: "ImageDirUnwritable", RolledBack: true, Err: fmt.Errorf("creating image folder: %w", err)}
	}
	fail := func(err error) (controller.ImageResult, error) {
		rolled := os.RemoveAll(dir) == nil
		return controller.ImageResult{}, &controller.ImageError{Cause: "ImageDirUnwritable", RolledBack: rolled, Err: err}
	}
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(dir, RecordFile), data, 0o600); err != nil {
		return fail(err)
	}
	_, err = image.Write(dir, image.Metadata{
		Pod:               image.Pod{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID)},
		Container:         image.Container{Name: pod.Spec.Containers[0].Name, ID: "simulated-" + string(pod.UID), Image: pod.Spec.Containers[0].Image},
		GPUs:              gpus,
		VRAMBytes:         vram,
		DriverVersion:     DriverVersion,
		CUDADriverVersion: CUDADriverVersion,
		Node:              im.Machine.node,
		Created:           im.Clock.Now().UTC(),
	})
	if err != nil {
		return fail(err)
	}
	desc, _, err := controller.Describe(dir, strings.ReplaceAll(im.Machine.model, "-", " "))
	if err != nil {
		return fail(fmt.Errorf("reading the image back: %w", err))
	}
	desc.Simulated = true
	if slices.Contains(faults, FaultCorruptImage) {
		// Damage after the checkpoint: the restore must notice.
		data[len(data)-2] ^= 0x20
		if err := os.WriteFile(filepath.Join(dir, RecordFile), data, 0o600); err != nil {
			return fail(err)
		}
		logger.Info("Damaged the simulated image after writing it (fault injected)", "fault", FaultCorruptImage)
	}
	logger.V(2).Info("Wrote simulated checkpoint image", "progress", rec.Progress, "vramBytes", vram, "digest", desc.Digest)
	return controller.ImageResult{Image: desc, Steps: []engine.Step{{Name: "Dump", Duration: im.Clock.Since(start), Bytes: vram}}}, nil
}

// Restore starts the pod's simulated processes from the image, checkpointed on gpus, with the
// progress the image recorded, and has the engine put their memory onto the GPUs.
func (im *Images) Restore(ctx context.Context, pod *v1.Pod, dir string, gpus []string) (engine.Result, error) {
	fail := func(cause string, err error) (engine.Result, error) {
		return engine.Result{}, &controller.ImageError{Cause: cause, Err: err}
	}
	if slices.Contains(podImageFaults(pod), FaultRestoreImage) {
		return fail("RestoreFailed", fmt.Errorf("simulated restore from %s failed (fault injected by %s=%s)", dir, AnnotationFail, FaultRestoreImage))
	}
	if _, err := image.Verify(dir); err != nil {
		return fail("ImageCorrupt", err)
	}
	data, err := os.ReadFile(filepath.Join(dir, RecordFile))
	if err != nil {
		return fail("ImageCorrupt", fmt.Errorf("image %s is not a simulated image: %w", dir, err))
	}
	var rec Record
	if err := json.Unmarshal(data, &rec); err != nil || !rec.Simulated {
		return fail("ImageCorrupt", fmt.Errorf("image %s: %s unreadable: %v", dir, RecordFile, err))
	}
	if !strings.EqualFold(rec.Model, im.Machine.model) || rec.DriverVersion != DriverVersion {
		return fail("Incompatible", fmt.Errorf("image %s was written on %s with driver %s; node %s has %s with driver %s",
			dir, rec.Model, rec.DriverVersion, im.Machine.node, im.Machine.model, DriverVersion))
	}
	if len(gpus) != len(rec.Processes) {
		return fail("Incompatible", fmt.Errorf("image %s holds %d gpu processes, the pod has %d gpus", dir, len(rec.Processes), len(gpus)))
	}
	uuids := make([]cuda.UUID, len(gpus))
	bytes := make([]uint64, len(gpus))
	for i, g := range gpus {
		u, err := cuda.ParseUUID(strings.TrimSpace(g))
		if err != nil {
			return fail("Invalid", err)
		}
		uuids[i], bytes[i] = u, rec.Processes[i].Bytes
	}
	if err := im.Machine.restore(pod, time.Duration(rec.Progress)*time.Second, uuids, bytes); err != nil {
		return fail("RestoreFailed", err)
	}
	res, err := im.Engine.Resume(ctx, podmap.PodRef{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}, uuids, nil)
	if err != nil {
		return engine.Result{}, err
	}
	klog.FromContext(ctx).V(2).Info("Restored simulated pod from image", "pod", klog.KObj(pod), "image", dir, "progress", rec.Progress, "simulated", true)
	return res, nil
}

func podImageFaults(pod *v1.Pod) []string {
	var out []string
	for _, f := range strings.Split(pod.Annotations[AnnotationFail], ",") {
		if f = strings.TrimSpace(f); slices.Contains(imageFaults, f) {
			out = append(out, f)
		}
	}
	return out
}

// progressOf is a pod's progress as of the last Tick.
func (m *Machine) progressOf(uid types.UID) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.pods[uid]; ok {
		return p.progress
	}
	return 0
}

// restore creates a restored pod's processes, checkpointed, with its progress.
func (m *Machine) restore(pod *v1.Pod, progress time.Duration, gpus []cuda.UUID, bytes []uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.pods[pod.UID]; ok {
		return errors.New("the pod has simulated processes already")
	}
	p := &simPod{ref: podmap.PodRef{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}, progress: progress, lastTick: m.clock.Now()}
	if err := m.start(p, gpus, bytes, true); err != nil {
		return err
	}
	m.pods[pod.UID] = p
	delete(m.ended, pod.UID)
	return nil
}

// End ends the simulated processes of a suspended pod whose memory was written into a
// checkpoint image (a spill to a storage tier): its parked memory leaves host memory, and the
// pod gets processes again only from Images.Restore. Only checkpointed processes are ended.
func (m *Machine) End(uid types.UID) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.pods[uid]
	if !ok {
		if m.ended[uid] {
			return nil
		}
		return errors.New("the pod has no simulated processes")
	}
	for _, sp := range p.procs {
		if fp, ok := m.cuda.Process(sp.pid); !ok || fp.State != cuda.ProcessStateCheckpointed {
			return fmt.Errorf("simulated process %d of the pod is not checkpointed: only suspended pods are ended", sp.pid)
		}
	}
	for _, sp := range p.procs {
		m.cuda.RemoveProcess(sp.pid)
		delete(m.byPID, sp.pid)
	}
	delete(m.pods, uid)
	m.ended[uid] = true
	return nil
}

// restoring reports whether a pod waits for its restore from an image.
func restoring(pod *v1.Pod) bool {
	return pod.Annotations[kv1.AnnotationRestoreFrom] != "" && kv1.PodGPUState(pod.Annotations[kv1.AnnotationState]) == kv1.PodRestoring
}
