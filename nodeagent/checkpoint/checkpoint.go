// Package checkpoint writes checkpoint images of containers on a node (package image: the CRIU
// image plus metadata.json): a container holding GPUs first has its GPU memory moved into its
// processes' host memory through the CUDA checkpoint API (the engine's Suspend), then the
// container is frozen, dumped by CRIU through containerd and the shim into the image folder,
// and stopped, unless the caller keeps it running.
//
// Any failure rolls back: the container runs again (thawed, its GPU memory restored), the
// image folder and CRIU's work folder are deleted, and the error says what failed, with the
// end of CRIU's log when CRIU failed.
//
// Restoring is the shim's job (kybernate.io/restore-from: runc restore); for an image with GPU
// memory the shim then calls the agent's Restore (Checkpointer.Restore), which puts the memory
// of the restored, still checkpointed CUDA processes onto the container's GPUs.
package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// Container is a container as containerd knows it.
type Container struct {
	// ID in containerd.
	ID string
	// Name is the container's name in its pod (kubelet label io.kubernetes.container.name).
	Name  string
	Image string
	// Runtime is containerd's runtime name, e.g. io.containerd.kybernate.v1.
	Runtime string
	Pod     image.Pod
	// Annotations of the container's OCI spec; the CRI plugin copies the pod's kybernate.io/
	// annotations there (pod_annotations).
	Annotations map[string]string
}

// Runtime is containerd, as far as checkpoints need it.
type Runtime interface {
	// FindContainer finds the container called name of a pod; with an empty name, the pod's
	// only container.
	FindContainer(ctx context.Context, pod image.Pod, name string) (Container, error)
	// Pause freezes the container's task; Resume thaws it.
	Pause(ctx context.Context, id string) error
	Resume(ctx context.Context, id string) error
	// Dump has CRIU write the (frozen) task into imageDir, using workDir for its logs, and
	// leaves the task as it was.
	Dump(ctx context.Context, id, imageDir, workDir string) error
	// Stop kills the task and deletes it; the container record stays.
	Stop(ctx context.Context, id string) error
	// Pids lists the PIDs of the container's task in the agent's PID namespace.
	Pids(ctx context.Context, id string) ([]int, error)
}

// GPUs moves the GPU memory of a pod's processes: the engine.
type GPUs interface {
	Suspend(ctx context.Context, pod podmap.PodRef, lockTimeout time.Duration) (engine.Result, error)
	Resume(ctx context.Context, pod podmap.PodRef, from, to []cuda.UUID) (engine.Result, error)
	RestoreImage(ctx context.Context, pod podmap.PodRef, req engine.ImageRestore) (engine.Result, error)
	// Parked is the GPU memory of a pod that is suspended already; ok is false otherwise.
	Parked(uid types.UID) (bytes int64, ok bool)
}

var _ GPUs = (*engine.Engine)(nil)

// Versions reports the node's driver versions for the metadata; empty without a GPU driver.
type Versions func(ctx context.Context) (driver string, cudaDriver int32)

// Config bounds a checkpoint.
type Config struct {
	// Node is the node's name, recorded in the metadata.
	Node string
	// Timeout bounds the CRIU dump (and the pause, resume and stop around it).
	Timeout time.Duration
}

// Checkpointer writes checkpoint images of the containers of one node.
type Checkpointer struct {
	cfg      Config
	runtime  Runtime
	gpus     GPUs
	versions Versions
	clock    clock.PassiveClock
}

// New returns a Checkpointer. gpus and versions may be nil on a node without a usable GPU
// driver: containers with GPUs are refused there.
func New(cfg Config, runtime Runtime, gpus GPUs, versions Versions, clk clock.PassiveClock) *Checkpointer {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Minute
	}
	return &Checkpointer{cfg: cfg, runtime: runtime, gpus: gpus, versions: versions, clock: clk}
}

// Request is one checkpoint.
type Request struct {
	Pod image.Pod
	// Container is the container's name in the pod; empty for the pod's only container.
	Container string
	// ImageDir is the image folder, an absolute path that must not exist yet; its parent
	// must.
	ImageDir string
	// LeaveRunning keeps the container running after the dump (a copy, not a move).
	LeaveRunning bool
	// LockTimeout bounds the CUDA lock of a container with GPUs; zero: the engine's.
	LockTimeout time.Duration
}

// Step names besides the engine's.
const (
	StepPause    = "Pause"
	StepDump     = "Dump"
	StepMetadata = "Metadata"
	StepStop     = "Stop"
	StepResume   = "Resume"
)

// Result is what a checkpoint wrote.
type Result struct {
	Metadata image.Metadata
	Steps    []engine.Step
}

// Cause classifies a failed checkpoint, for the API's status codes.
type Cause string

const (
	CauseInvalid     Cause = "Invalid"
	CauseExists      Cause = "ImageExists"
	CauseNotFound    Cause = "NotFound"
	CauseUnsupported Cause = "Unsupported"
	CauseImageDir    Cause = "ImageDirUnwritable"
	CauseGPU         Cause = "GPUCheckpointFailed"
	CauseDump        Cause = "DumpFailed"
	// CauseDiskFull: the image's file system filled up while it was written.
	CauseDiskFull Cause = "DiskFull"
	CauseTimeout  Cause = "Timeout"
	CauseInternal Cause = "Internal"
)

// Error is a failed checkpoint or restore.
type Error struct {
	Cause Cause
	// RolledBack is false when the rollback failed too: the container may not be running.
	RolledBack bool
	// Restore is set for a failed restore, which rolls nothing back: its caller stops the
	// container and the image stays.
	Restore bool
	Err     error
}

func (e *Error) Error() string {
	if e.Restore {
		return fmt.Sprintf("restore failed (the image is kept): %v", e.Err)
	}
	if !e.RolledBack {
		return fmt.Sprintf("checkpoint failed and its rollback failed too, the container may not be running: %v", e.Err)
	}
	return fmt.Sprintf("checkpoint failed (container left as it was, no image written): %v", e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// CauseOf returns the cause of a checkpoint error, CauseInternal for others.
func CauseOf(err error) Cause {
	var e *Error
	if errors.As(err, &e) {
		return e.Cause
	}
	return CauseInternal
}

func fail(c Cause, format string, args ...any) error {
	return &Error{Cause: c, RolledBack: true, Err: fmt.Errorf(format, args...)}
}

// Checkpoint writes an image of the container req names.
func (c *Checkpointer) Checkpoint(ctx context.Context, req Request) (Result, error) {
	logger := klog.FromContext(ctx).WithValues("pod", klog.KRef(req.Pod.Namespace, req.Pod.Name), "container", req.Container, "image", req.ImageDir)
	if !filepath.IsAbs(req.ImageDir) || filepath.Clean(req.ImageDir) != req.ImageDir {
		return Result{}, fail(CauseInvalid, "image folder %q: want a clean absolute path", req.ImageDir)
	}
	ctr, err := c.runtime.FindContainer(ctx, req.Pod, req.Container)
	if err != nil {
		return Result{}, fail(CauseNotFound, "%w", err)
	}
	if ctr.Runtime != "io.containerd.kybernate.v1" && !strings.HasPrefix(ctr.Runtime, "io.containerd.runc.") {
		return Result{}, fail(CauseUnsupported, "container %s runs under runtime %s: checkpoints need the kybernate runtime (runtimeClassName: kybernate)", ctr.ID, ctr.Runtime)
	}
	var gpus []string
	if v := ctr.Annotations[kv1.AnnotationGPUs]; strings.TrimSpace(v) != "" {
		if gpus, err = gpupod.ParseGPUs(v); err != nil {
			return Result{}, fail(CauseInvalid, "container %s: %w", ctr.ID, err)
		}
	}
	if len(gpus) > 0 && c.gpus == nil {
		return Result{}, fail(CauseUnsupported, "container %s holds gpus %v, but the CUDA driver is not usable on this node", ctr.ID, gpus)
	}

	// The image folder: created now, so that an unwritable place fails before anything is
	// touched, and deleted again on any failure.
	if err := os.Mkdir(req.ImageDir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return Result{}, fail(CauseExists, "image folder %s exists already", req.ImageDir)
		}
		return Result{}, fail(CauseImageDir, "creating image folder: %w", err)
	}
	work, err := os.MkdirTemp(filepath.Dir(req.ImageDir), "."+filepath.Base(req.ImageDir)+".criu-work-")
	if err != nil {
		os.Remove(req.ImageDir)
		return Result{}, fail(CauseImageDir, "creating criu's work folder next to the image: %w", err)
	}
	defer os.RemoveAll(work)

	var (
		res      Result
		undo     []func(context.Context) error
		pod      = podmap.PodRef{Namespace: ctr.Pod.Namespace, Name: ctr.Pod.Name, UID: types.UID(ctr.Pod.UID)}
		rollback = func(cause Cause, err error) (Result, error) {
			// The rollback runs even when the caller's context is gone.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.Timeout)
			defer cancel()
			var errs []error
			for i := len(undo) - 1; i >= 0; i-- {
				if uerr := undo[i](rctx); uerr != nil {
					errs = append(errs, uerr)
				}
			}
			if rerr := os.RemoveAll(req.ImageDir); rerr != nil {
				errs = append(errs, fmt.Errorf("deleting the partial image: %w", rerr))
			}
			if len(errs) > 0 {
				logger.Error(errors.Join(errs...), "Rollback of a failed checkpoint failed")
				return Result{}, &Error{Cause: cause, RolledBack: false, Err: fmt.Errorf("%w; rollback: %w", err, errors.Join(errs...))}
			}
			logger.V(2).Info("Checkpoint failed and was rolled back", "err", err)
			return Result{}, &Error{Cause: cause, RolledBack: true, Err: err}
		}
		step = func(name string, start time.Time, bytes int64) {
			res.Steps = append(res.Steps, engine.Step{Name: name, Duration: c.clock.Since(start), Bytes: bytes})
		}
	)

	var vram int64
	if parked, suspended := c.parkedBytes(pod, gpus); suspended {
		// Suspended before (a migration): the memory is in the processes' host memory already
		// and stays there whatever happens here.
		vram = parked
	} else if len(gpus) > 0 {
		r, err := c.gpus.Suspend(ctx, pod, req.LockTimeout)
		if err != nil {
			return rollback(CauseGPU, fmt.Errorf("moving gpu memory to host memory: %w", err))
		}
		vram = r.Bytes
		res.Steps = append(res.Steps, r.Steps...)
		undo = append(undo, func(ctx context.Context) error {
			if _, err := c.gpus.Resume(ctx, pod, nil, nil); err != nil {
				return fmt.Errorf("restoring gpu memory: %w", err)
			}
			return nil
		})
	}

	dctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	start := c.clock.Now()
	if err := c.runtime.Pause(dctx, ctr.ID); err != nil {
		return rollback(causeOf(dctx, CauseUnsupported), fmt.Errorf("freezing container %s: %w", ctr.ID, err))
	}
	step(StepPause, start, 0)
	undo = append(undo, func(ctx context.Context) error {
		if err := c.runtime.Resume(ctx, ctr.ID); err != nil {
			return fmt.Errorf("thawing container %s: %w", ctr.ID, err)
		}
		return nil
	})

	start = c.clock.Now()
	if err := c.runtime.Dump(dctx, ctr.ID, req.ImageDir, work); err != nil {
		err = fmt.Errorf("criu dump of container %s: %w%s", ctr.ID, err, logTail(filepath.Join(work, "dump.log")))
		if full := diskFull(req.ImageDir); full != "" {
			return rollback(CauseDiskFull, fmt.Errorf("%s: %w", full, err))
		}
		return rollback(causeOf(dctx, CauseDump), err)
	}
	step(StepDump, start, 0)

	start = c.clock.Now()
	m := image.Metadata{
		Pod:         ctr.Pod,
		Container:   image.Container{Name: ctr.Name, ID: ctr.ID, Image: ctr.Image},
		GPUs:        gpus,
		VRAMBytes:   vram,
		CRIUVersion: criuVersion(filepath.Join(work, "dump.log")),
		Node:        c.cfg.Node,
		Created:     c.clock.Now().UTC(),
	}
	if c.versions != nil {
		m.DriverVersion, m.CUDADriverVersion = c.versions(ctx)
	}
	if m, err = image.Write(req.ImageDir, m); err != nil {
		if full := diskFull(req.ImageDir); full != "" {
			return rollback(CauseDiskFull, fmt.Errorf("%s: %w", full, err))
		}
		return rollback(CauseImageDir, err)
	}
	res.Metadata = m
	step(StepMetadata, start, 0)

	start = c.clock.Now()
	if req.LeaveRunning {
		// Undo is exactly what a copy does after the dump: thaw, GPU memory back.
		for i := len(undo) - 1; i >= 0; i-- {
			if err := undo[i](dctx); err != nil {
				return Result{}, &Error{Cause: causeOf(dctx, CauseInternal), RolledBack: false, Err: fmt.Errorf("image written, but resuming the container failed: %w", err)}
			}
		}
		step(StepResume, start, 0)
	} else {
		if err := c.runtime.Stop(dctx, ctr.ID); err != nil {
			return rollback(causeOf(dctx, CauseInternal), fmt.Errorf("stopping container %s after the dump: %w", ctr.ID, err))
		}
		step(StepStop, start, 0)
	}
	logger.V(2).Info("Checkpointed container", "id", ctr.ID, "gpus", gpus, "vramBytes", vram, "files", len(m.Files), "leaveRunning", req.LeaveRunning)
	return res, nil
}

// causeOf is CauseTimeout when ctx ran out, c otherwise.
func causeOf(ctx context.Context, c Cause) Cause {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return CauseTimeout
	}
	return c
}

// fullBelow is the space left under which a failed write is put down to a full disk. CRIU
// writes the pages of a process in large pieces: a disk that filled up has less left than one.
const fullBelow = 1 << 20

// diskFull says that the file system of the image dir is full ("" when it is not, or cannot
// be read): CRIU's own message does not say so when its log is on the same disk.
func diskFull(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(dir), &st); err != nil {
		return ""
	}
	if free := st.Bavail * uint64(st.Bsize); free < fullBelow {
		return fmt.Sprintf("the file system of %s is full (%d bytes left of %d)", filepath.Dir(dir), free, st.Blocks*uint64(st.Bsize))
	}
	return ""
}

// parkedBytes reports whether the pod's GPU memory is parked in host memory already (the pod is
// suspended), and how much.
func (c *Checkpointer) parkedBytes(pod podmap.PodRef, gpus []string) (int64, bool) {
	if len(gpus) == 0 || c.gpus == nil {
		return 0, false
	}
	return c.gpus.Parked(pod.UID)
}
