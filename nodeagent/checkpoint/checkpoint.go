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
	// Keep, when set, runs once the image is complete and before the container is stopped or
	// thawed, with the container still frozen: it takes the image somewhere safe (the storage
	// tiers encrypt it onto disk). An error rolls the checkpoint back: the container runs on as
	// before and the image folder is deleted.
	Keep func(ctx context.Context, dir string) error
	// Frozen says the container is frozen already (a suspended pod without GPUs): it is not
	// paused again, and a rollback leaves it frozen rather than thawing it.
	Frozen bool
}

// Step names besides the engine's.
const (
	StepPause    = "Pause"
	StepDump     = "Dump"
	StepMetadata = "Metadata"
	StepStop     = "Stop"
	StepResume   = "Resume"
	StepKeep     = "Keep"
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

// Checkpoint writes an image of the container req names. Each step that changes the container
// registers its undo; a failure runs them in reverse and deletes the partial image.
func (c *Checkpointer) Checkpoint(ctx context.Context, req Request) (Result, error) {
	ctr, gpus, err := c.container(ctx, req)
	if err != nil {
		return Result{}, err
	}
	work, err := makeImageDir(req.ImageDir)
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(work)
	r := &run{c: c, req: req, ctr: ctr, gpus: gpus, work: work,
		pod:    podmap.PodRef{Namespace: ctr.Pod.Namespace, Name: ctr.Pod.Name, UID: types.UID(ctr.Pod.UID)},
		logger: klog.FromContext(ctx).WithValues("pod", klog.KRef(req.Pod.Namespace, req.Pod.Name), "container", req.Container, "image", req.ImageDir),
	}
	return r.checkpoint(ctx)
}

// container finds the container req names and the GPUs it holds, refusing what cannot be
// checkpointed before anything is touched.
func (c *Checkpointer) container(ctx context.Context, req Request) (Container, []string, error) {
	if !filepath.IsAbs(req.ImageDir) || filepath.Clean(req.ImageDir) != req.ImageDir {
		return Container{}, nil, fail(CauseInvalid, "image folder %q: want a clean absolute path", req.ImageDir)
	}
	ctr, err := c.runtime.FindContainer(ctx, req.Pod, req.Container)
	if err != nil {
		return Container{}, nil, fail(CauseNotFound, "%w", err)
	}
	if ctr.Runtime != "io.containerd.kybernate.v1" && !strings.HasPrefix(ctr.Runtime, "io.containerd.runc.") {
		return Container{}, nil, fail(CauseUnsupported, "container %s runs under runtime %s: checkpoints need the kybernate runtime (runtimeClassName: kybernate)", ctr.ID, ctr.Runtime)
	}
	var gpus []string
	if v := ctr.Annotations[kv1.AnnotationGPUs]; strings.TrimSpace(v) != "" {
		if gpus, err = gpupod.ParseGPUs(v); err != nil {
			return Container{}, nil, fail(CauseInvalid, "container %s: %w", ctr.ID, err)
		}
	}
	if len(gpus) > 0 && c.gpus == nil {
		return Container{}, nil, fail(CauseUnsupported, "container %s holds gpus %v, but the CUDA driver is not usable on this node", ctr.ID, gpus)
	}
	return ctr, gpus, nil
}

// makeImageDir creates the image folder now, so that an unwritable place fails before anything
// is touched, and CRIU's work folder next to it; it returns the work folder.
func makeImageDir(dir string) (string, error) {
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return "", fail(CauseExists, "image folder %s exists already", dir)
		}
		return "", fail(CauseImageDir, "creating image folder: %w", err)
	}
	work, err := os.MkdirTemp(filepath.Dir(dir), "."+filepath.Base(dir)+".criu-work-")
	if err != nil {
		os.Remove(dir)
		return "", fail(CauseImageDir, "creating criu's work folder next to the image: %w", err)
	}
	return work, nil
}

// run is one checkpoint in progress: what it did so far and how to undo it.
type run struct {
	c      *Checkpointer
	req    Request
	ctr    Container
	gpus   []string
	pod    podmap.PodRef
	work   string
	logger klog.Logger
	res    Result
	undo   []func(context.Context) error
}

func (r *run) checkpoint(ctx context.Context) (Result, error) {
	vram, err := r.suspendGPUs(ctx)
	if err != nil {
		return r.rollback(ctx, CauseGPU, err)
	}
	dctx, cancel := context.WithTimeout(ctx, r.c.cfg.Timeout)
	defer cancel()
	if cause, err := r.freezeAndDump(dctx); err != nil {
		return r.rollback(ctx, cause, err)
	}
	start := r.c.clock.Now()
	m, err := r.writeMetadata(ctx, vram)
	if err != nil {
		cause := diskFullOr(r.req.ImageDir, CauseImageDir, &err)
		return r.rollback(ctx, cause, err)
	}
	r.res.Metadata = m
	r.step(StepMetadata, start, 0)
	if r.req.Keep != nil {
		start = r.c.clock.Now()
		if err := r.req.Keep(ctx, r.req.ImageDir); err != nil {
			cause := diskFullOr(r.req.ImageDir, CauseImageDir, &err)
			return r.rollback(ctx, cause, fmt.Errorf("keeping the image: %w", err))
		}
		r.step(StepKeep, start, 0)
	}
	if err := r.finish(dctx); err != nil {
		return Result{}, err
	}
	r.logger.V(2).Info("Checkpointed container", "id", r.ctr.ID, "gpus", r.gpus, "vramBytes", vram, "files", len(m.Files), "leaveRunning", r.req.LeaveRunning)
	return r.res, nil
}

func (r *run) step(name string, start time.Time, bytes int64) {
	r.res.Steps = append(r.res.Steps, engine.Step{Name: name, Duration: r.c.clock.Since(start), Bytes: bytes})
}

// suspendGPUs moves the container's GPU memory into its processes' host memory and returns
// its size. A pod suspended before (a migration) has it there already, and it stays there
// whatever happens here.
func (r *run) suspendGPUs(ctx context.Context) (int64, error) {
	if parked, suspended := r.c.parkedBytes(r.pod, r.gpus); suspended {
		return parked, nil
	}
	if len(r.gpus) == 0 {
		return 0, nil
	}
	res, err := r.c.gpus.Suspend(ctx, r.pod, r.req.LockTimeout)
	if err != nil {
		return 0, fmt.Errorf("moving gpu memory to host memory: %w", err)
	}
	r.res.Steps = append(r.res.Steps, res.Steps...)
	r.undo = append(r.undo, func(ctx context.Context) error {
		if _, err := r.c.gpus.Resume(ctx, r.pod, nil, nil); err != nil {
			return fmt.Errorf("restoring gpu memory: %w", err)
		}
		return nil
	})
	return res.Bytes, nil
}

// freezeAndDump pauses the container and has CRIU dump it into the image folder.
func (r *run) freezeAndDump(ctx context.Context) (Cause, error) {
	id := r.ctr.ID
	start := r.c.clock.Now()
	if r.req.Frozen {
		return r.dump(ctx)
	}
	if err := r.c.runtime.Pause(ctx, id); err != nil {
		return causeOf(ctx, CauseUnsupported), fmt.Errorf("freezing container %s: %w", id, err)
	}
	r.step(StepPause, start, 0)
	r.undo = append(r.undo, func(ctx context.Context) error {
		if err := r.c.runtime.Resume(ctx, id); err != nil {
			return fmt.Errorf("thawing container %s: %w", id, err)
		}
		return nil
	})
	return r.dump(ctx)
}

// dump has CRIU write the frozen container into the image folder.
func (r *run) dump(ctx context.Context) (Cause, error) {
	id := r.ctr.ID
	start := r.c.clock.Now()
	if err := r.c.runtime.Dump(ctx, id, r.req.ImageDir, r.work); err != nil {
		err = fmt.Errorf("criu dump of container %s: %w%s", id, err, logTail(filepath.Join(r.work, "dump.log")))
		cause := diskFullOr(r.req.ImageDir, causeOf(ctx, CauseDump), &err)
		return cause, err
	}
	r.step(StepDump, start, 0)
	return "", nil
}

func (r *run) writeMetadata(ctx context.Context, vram int64) (image.Metadata, error) {
	m := image.Metadata{
		Pod:         r.ctr.Pod,
		Container:   image.Container{Name: r.ctr.Name, ID: r.ctr.ID, Image: r.ctr.Image},
		GPUs:        r.gpus,
		VRAMBytes:   vram,
		CRIUVersion: criuVersion(filepath.Join(r.work, "dump.log")),
		Node:        r.c.cfg.Node,
		Created:     r.c.clock.Now().UTC(),
	}
	if r.c.versions != nil {
		m.DriverVersion, m.CUDADriverVersion = r.c.versions(ctx)
	}
	return image.Write(r.req.ImageDir, m)
}

// finish stops the container after the dump, or for a copy (LeaveRunning) undoes exactly what
// the checkpoint did: thaw, GPU memory back.
func (r *run) finish(ctx context.Context) error {
	start := r.c.clock.Now()
	if !r.req.LeaveRunning {
		if err := r.c.runtime.Stop(ctx, r.ctr.ID); err != nil {
			_, err = r.rollback(ctx, causeOf(ctx, CauseInternal), fmt.Errorf("stopping container %s after the dump: %w", r.ctr.ID, err))
			return err
		}
		r.step(StepStop, start, 0)
		return nil
	}
	for i := len(r.undo) - 1; i >= 0; i-- {
		if err := r.undo[i](ctx); err != nil {
			return &Error{Cause: causeOf(ctx, CauseInternal), RolledBack: false, Err: fmt.Errorf("image written, but resuming the container failed: %w", err)}
		}
	}
	r.step(StepResume, start, 0)
	return nil
}

// rollback undoes what the checkpoint did, in reverse, and deletes the partial image; it runs
// even when the caller's context is gone.
func (r *run) rollback(ctx context.Context, cause Cause, err error) (Result, error) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.c.cfg.Timeout)
	defer cancel()
	var errs []error
	for i := len(r.undo) - 1; i >= 0; i-- {
		if uerr := r.undo[i](rctx); uerr != nil {
			errs = append(errs, uerr)
		}
	}
	if rerr := os.RemoveAll(r.req.ImageDir); rerr != nil {
		errs = append(errs, fmt.Errorf("deleting the partial image: %w", rerr))
	}
	if len(errs) > 0 {
		r.logger.Error(errors.Join(errs...), "Rollback of a failed checkpoint failed")
		return Result{}, &Error{Cause: cause, RolledBack: false, Err: fmt.Errorf("%w; rollback: %w", err, errors.Join(errs...))}
	}
	r.logger.V(2).Info("Checkpoint failed and was rolled back", "err", err)
	return Result{}, &Error{Cause: cause, RolledBack: true, Err: err}
}

// diskFullOr is CauseDiskFull, with *err prefixed by what filled up, when the image's file
// system is full; cause otherwise.
func diskFullOr(dir string, cause Cause, err *error) Cause {
	if full := diskFull(dir); full != "" {
		*err = fmt.Errorf("%s: %w", full, *err)
		return CauseDiskFull
	}
	return cause
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
