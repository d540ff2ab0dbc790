// Package shim is the task service of containerd-shim-kybernate-v1 (runtime
// io.containerd.kybernate.v1): containerd's runc v2 task service, wrapped. Containers without
// kybernate.io/ annotations pass through untouched and behave exactly as under runc v2. Before
// a container is created the shim patches its OCI spec: the GPUs of kybernate.io/gpus (package
// spec), and for kybernate.io/restore-from=<image> a restore from that checkpoint image (runc
// restore with the CRIU settings the agent's checkpoints need) instead of a fresh start. A
// checkpoint honours CheckpointOptions.ImagePath, which containerd 1.6 and 1.7 pass on but
// only act on for io.containerd.runc.* runtimes.
//
// Logs go through containerd's logger (log.G), as in every containerd shim: the daemon
// collects them from the shim's log pipe.
package shim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/plugin"
	"github.com/containerd/containerd/protobuf"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/containerd/containerd/runtime/v2/runc/task"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/shim/spec"
)

// RuntimeName is the runtime containerd knows the shim by; the binary is
// containerd-shim-kybernate-v1.
const RuntimeName = "io.containerd.kybernate.v1"

// The CRI plugin's annotations: the one that tells a pod's sandbox container from its
// containers, and the pod of a container.
const (
	criContainerType        = "io.kubernetes.cri.container-type"
	criContainerTypeSandbox = "sandbox"
	criSandboxNamespace     = "io.kubernetes.cri.sandbox-namespace"
	criSandboxName          = "io.kubernetes.cri.sandbox-name"
	criSandboxUID           = "io.kubernetes.cri.sandbox-uid"
)

// Files the shim writes: into a bundle for a restore, into containerd's own checkpoint folder
// for a checkpoint redirected to CheckpointOptions.ImagePath.
const (
	restoreConfigFile = "kybernate-criu-restore.conf"
	restoreWorkDir    = "criu-restore"
	redirectFile      = "kybernate-checkpoint.json"
)

func init() {
	plugin.Register(&plugin.Registration{
		Type:     plugin.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugin.EventPlugin, plugin.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (interface{}, error) {
			pp, err := ic.GetByID(plugin.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugin.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			inner, err := task.NewTaskService(ic.Context, pp.(shim.Publisher), ss.(shutdown.Service))
			if err != nil {
				return nil, err
			}
			return New(inner, spec.LoadConfigFromEnv, spec.HostDevices{}, SocketAgent{}), nil
		},
	})
}

// Service is the wrapped task service.
type Service struct {
	taskAPI.TaskService
	config  func() (spec.Config, error)
	devices spec.Devices
	agent   Agent

	mu sync.Mutex
	// restores are the containers created for a restore, by id: their Start runs CRIU.
	restores map[string]restore
}

// restore is a container created for a restore.
type restore struct {
	cfg spec.Config
	// gpu is the agent's Restore request when the image holds GPU memory: it is sent after
	// runc restore.
	gpu *agentv1.RestoreRequest
	// spilled is the agent's spilled image the container is restored from, released after
	// the start; nil for kybernate.io/restore-from.
	spilled *agentv1.ReleaseSpilledRequest
}

var _ taskAPI.TaskService = (*Service)(nil)

// New wraps inner. config loads the settings when a container needs them (a broken settings
// file fails only containers with kybernate.io/ annotations); devices reads the host's device
// nodes; agent is the node agent's API: the GPU memory of restored images, spilled images.
func New(inner taskAPI.TaskService, config func() (spec.Config, error), devices spec.Devices, agent Agent) *Service {
	return &Service{TaskService: inner, config: config, devices: devices, agent: agent, restores: map[string]restore{}}
}

// RegisterTTRPC serves the wrapper, not the inner service.
func (s *Service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTaskService(server, s)
	return nil
}

// Create patches the bundle's spec for kybernate.io/ annotations, then creates the container.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	rs, err := s.prepare(ctx, r)
	if err != nil {
		log.G(ctx).WithError(err).WithField("id", r.ID).Error("kybernate: refusing to create container")
		return nil, errdefs.ToGRPC(err)
	}
	resp, err := s.TaskService.Create(ctx, r)
	if err != nil && rs != nil {
		s.releaseSpilled(ctx, r.ID, rs, false)
	}
	if err == nil && rs != nil {
		s.mu.Lock()
		s.restores[r.ID] = *rs
		s.mu.Unlock()
	}
	return resp, err
}

// Start starts a container; for one created for a restore that is `runc restore`, bounded by
// the CRIU timeout, and for an image with GPU memory then the agent's Restore, bounded by the
// agent timeout. CRIU leaves the restored CUDA processes checkpointed in the driver: they run,
// but their first CUDA call waits until the agent has put their memory onto the container's
// GPUs and unlocked them. When the agent fails, the container is killed: its processes cannot
// run without their GPU memory. The image is never changed.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	s.mu.Lock()
	rs, restore := s.restores[r.ID]
	if r.ExecID == "" {
		delete(s.restores, r.ID)
	}
	s.mu.Unlock()
	if !restore || r.ExecID != "" {
		return s.TaskService.Start(ctx, r)
	}
	cfg := rs.cfg
	cctx, cancel := context.WithTimeout(ctx, cfg.CRIUTimeout.Duration)
	defer cancel()
	resp, err := s.TaskService.Start(cctx, r)
	if err != nil && cctx.Err() != nil {
		err = errdefs.ToGRPCf(errdefs.ErrUnavailable, "restore did not finish within %s (criuTimeout): %v", cfg.CRIUTimeout.Duration, err)
	}
	if err != nil || rs.gpu == nil {
		s.releaseSpilled(ctx, r.ID, &rs, err == nil)
		return resp, err
	}

	logger := log.G(ctx).WithField("id", r.ID).WithField("image", rs.gpu.GetImageDir())
	actx, acancel := context.WithTimeout(ctx, cfg.AgentTimeout.Duration)
	defer acancel()
	start := time.Now()
	ares, aerr := s.agent.Restore(actx, cfg.AgentSocket, rs.gpu)
	s.releaseSpilled(ctx, r.ID, &rs, aerr == nil)
	if aerr == nil {
		logger.WithField("gpus", ares.GetResult().GetGpus()).WithField("bytes", ares.GetResult().GetBytes()).
			WithField("duration", time.Since(start)).Info("kybernate: gpu memory restored by the agent")
		return resp, nil
	}
	// The processes are checkpointed in the driver and can never run: stop them. The exit
	// reaches containerd as for any task that dies.
	_, kerr := s.TaskService.Kill(context.WithoutCancel(ctx), &taskAPI.KillRequest{ID: r.ID, Signal: uint32(syscall.SIGKILL), All: true})
	msg := fmt.Sprintf("restore: runc restored the container, but putting the gpu memory of image %s onto gpus %v through the agent at %s failed: %v",
		rs.gpu.GetImageDir(), rs.gpu.GetTargetGpus(), cfg.AgentSocket, aerr)
	if kerr != nil {
		msg += fmt.Sprintf("; stopping the container failed too: %v", kerr)
	} else {
		msg += "; the container is stopped"
	}
	msg += ", the image is kept"
	logger.WithError(aerr).Error("kybernate: " + msg)
	return nil, errdefs.ToGRPCf(errdefs.ErrFailedPrecondition, "%s", msg)
}

// Checkpoint dumps the container into CheckpointOptions.ImagePath when it is set: containerd
// passes its own temporary folder as the path and would otherwise archive the image from it.
// That folder gets a small file naming the redirect, so that what containerd archives from it
// differs from one checkpoint to the next (it refuses to store the same blob twice).
func (s *Service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*ptypes.Empty, error) {
	if r.Options != nil {
		v, err := typeurl.UnmarshalAny(r.Options)
		if err != nil {
			return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "checkpoint options: %v", err)
		}
		if opts, ok := v.(*options.CheckpointOptions); ok && opts.ImagePath != "" && opts.ImagePath != r.Path {
			if !filepath.IsAbs(opts.ImagePath) {
				return nil, errdefs.ToGRPCf(errdefs.ErrInvalidArgument, "checkpoint image path %q: want an absolute path", opts.ImagePath)
			}
			if r.Path != "" {
				if err := markRedirect(r.Path, opts.ImagePath); err != nil {
					log.G(ctx).WithError(err).Warn("kybernate: marking containerd's checkpoint folder")
				}
			}
			log.G(ctx).WithField("id", r.ID).WithField("imagePath", opts.ImagePath).Info("kybernate: checkpoint into the image path")
			r.Path = opts.ImagePath
		}
	}
	cfg, err := s.config()
	if err != nil {
		cfg = spec.Default()
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.CRIUTimeout.Duration)
	defer cancel()
	resp, err := s.TaskService.Checkpoint(ctx, r)
	if err != nil && ctx.Err() != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrUnavailable, "checkpoint did not finish within %s (criuTimeout): %v", cfg.CRIUTimeout.Duration, err)
	}
	return resp, err
}

func markRedirect(dir, imagePath string) error {
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce)
	data, err := json.Marshal(map[string]string{"imagePath": imagePath, "time": time.Now().UTC().Format(time.RFC3339Nano), "nonce": hex.EncodeToString(nonce)})
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, redirectFile), data, 0o600)
}

// prepare patches the bundle's config.json. It returns what Start needs when the container is
// restored from an image, nil otherwise. Without kybernate.io/ annotations it changes nothing.
func (s *Service) prepare(ctx context.Context, r *taskAPI.CreateTaskRequest) (*restore, error) {
	path := filepath.Join(r.Bundle, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the bundle's spec: %w", err)
	}
	var sp specs.Spec
	if err := json.Unmarshal(data, &sp); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	gpus, restoreFrom := sp.Annotations[kv1.AnnotationGPUs], sp.Annotations[kv1.AnnotationRestoreFrom]
	// CRI hands the pod's annotations to its sandbox (pause) container too: it gets neither
	// GPUs nor a restore.
	if sp.Annotations[criContainerType] == criContainerTypeSandbox {
		return nil, nil
	}
	spillable := restoreFrom == "" && spilledPod(sp.Annotations) != nil
	if gpus == "" && restoreFrom == "" && !spillable {
		return nil, nil
	}
	cfg, err := s.config()
	if err != nil {
		return nil, err
	}
	logger := log.G(ctx).WithField("id", r.ID)
	var uuids []string
	if gpus != "" {
		if uuids, err = gpupod.ParseGPUs(gpus); err != nil {
			return nil, err
		}
		if err := spec.GPUs(&sp, uuids, cfg, s.devices); err != nil {
			return nil, fmt.Errorf("exposing gpus %s: %w", gpus, err)
		}
		logger.WithField("gpus", uuids).WithField("deviceNodes", cfg.DeviceNodes).Info("kybernate: gpus exposed")
	}
	var spilled *agentv1.ReleaseSpilledRequest
	if spillable {
		if spilled, err = s.fetchSpilled(ctx, r.ID, sp.Annotations, cfg); err != nil {
			return nil, err
		}
		if spilled != nil {
			restoreFrom = spilled.GetImageDir()
		} else if gpus == "" {
			return nil, nil // nothing to change: as any container
		}
	}
	var rs *restore
	if restoreFrom != "" {
		if rs, err = s.prepareRestore(r, &sp, restoreFrom, uuids, cfg, spilled != nil); err != nil {
			s.releaseSpilled(ctx, r.ID, &restore{cfg: cfg, spilled: spilled}, false)
			return nil, err
		}
		rs.spilled = spilled
		logger.WithField("image", restoreFrom).WithField("gpuMemory", rs.gpu != nil).WithField("spilled", spilled != nil).
			Info("kybernate: container is restored from a checkpoint image")
	}
	out, err := json.Marshal(&sp)
	if err == nil {
		err = writeFile(path, out)
	}
	if err != nil {
		if rs != nil {
			s.releaseSpilled(ctx, r.ID, rs, false)
		}
		return nil, fmt.Errorf("writing the bundle's spec: %w", err)
	}
	return rs, nil
}

// prepareRestore checks the image and turns the create into a restore from it. gpus are the
// container's kybernate.io/gpus: where an image's GPU memory goes. fetched: the folder is the
// agent's answer to FetchSpilled, decrypted and verified against the tier's manifest moments
// ago, so its files are checked for presence and size only; any other image is verified
// (every file's SHA-256) before runc reads it.
func (s *Service) prepareRestore(r *taskAPI.CreateTaskRequest, sp *specs.Spec, dir string, gpus []string, cfg spec.Config, fetched bool) (*restore, error) {
	fail := func(err error) (*restore, error) { return nil, err }
	if r.Checkpoint != "" {
		return fail(fmt.Errorf("annotation %s=%s and a containerd checkpoint (%s) at once: %w", kv1.AnnotationRestoreFrom, dir, r.Checkpoint, errdefs.ErrInvalidArgument))
	}
	if _, err := image.ResolveRestore(cfg.CheckpointDir, sp.Annotations[criSandboxNamespace], dir); err != nil {
		var re *image.RefusedError
		switch {
		case errors.Is(err, image.ErrMissing):
			return fail(fmt.Errorf("restore: %w: %w", err, errdefs.ErrNotFound))
		case errors.As(err, &re) && re.Reason == image.RefusedInvalidPath:
			return fail(fmt.Errorf("annotation %s: %w: %w", kv1.AnnotationRestoreFrom, err, errdefs.ErrInvalidArgument))
		default:
			return fail(fmt.Errorf("annotation %s (pod namespace %q, checkpointDir %s): %w: %w", kv1.AnnotationRestoreFrom,
				sp.Annotations[criSandboxNamespace], cfg.CheckpointDir, err, errdefs.ErrFailedPrecondition))
		}
	}
	check := image.Verify
	if fetched {
		check = image.Check
	}
	m, err := check(dir)
	if err != nil {
		if errors.Is(err, image.ErrMissing) {
			return fail(fmt.Errorf("restore: %w: %w", err, errdefs.ErrNotFound))
		}
		return fail(fmt.Errorf("restore: %w: %w", err, errdefs.ErrFailedPrecondition))
	}
	rs := &restore{cfg: cfg}
	if len(m.GPUs) > 0 {
		// The process's memory goes onto the container's GPUs, one per GPU of the image; the
		// device nodes and driver libraries the process needs come from kybernate.io/gpus.
		if len(gpus) != len(m.GPUs) {
			return fail(fmt.Errorf("restore: image %s holds GPU memory of %d gpus (%v), but the container has %d gpus in %s: want one per gpu of the image: %w",
				dir, len(m.GPUs), m.GPUs, len(gpus), kv1.AnnotationGPUs, errdefs.ErrFailedPrecondition))
		}
		rs.gpu = &agentv1.RestoreRequest{
			Pod: &agentv1.PodRef{Namespace: sp.Annotations[criSandboxNamespace], Name: sp.Annotations[criSandboxName],
				Uid: sp.Annotations[criSandboxUID]},
			ImageDir:    dir,
			ContainerId: r.ID,
			TargetGpus:  gpus,
		}
	}
	conf := filepath.Join(r.Bundle, restoreConfigFile)
	if err := writeFile(conf, spec.CRIURestoreConfig(cfg)); err != nil {
		return fail(fmt.Errorf("restore: writing criu settings: %w", err))
	}
	spec.Restore(sp, conf)

	// runc restore writes its logs into the work folder, by default the image: keep the image
	// as it was (it may be restored again, or be read-only).
	opts := &options.Options{}
	if r.Options.GetValue() != nil {
		v, err := typeurl.UnmarshalAny(r.Options)
		if err != nil {
			return fail(fmt.Errorf("runtime options: %w", err))
		}
		o, ok := v.(*options.Options)
		if !ok {
			return fail(fmt.Errorf("runtime options of type %s, want runc's options: %w", r.Options.GetTypeUrl(), errdefs.ErrInvalidArgument))
		}
		opts = o
	}
	if opts.CriuWorkPath == "" {
		opts.CriuWorkPath = filepath.Join(r.Bundle, restoreWorkDir)
	}
	if err := os.MkdirAll(opts.CriuWorkPath, 0o700); err != nil {
		return fail(fmt.Errorf("restore: %w", err))
	}
	a, err := typeurl.MarshalAny(opts)
	if err != nil {
		return fail(err)
	}
	r.Options = protobuf.FromAny(a)
	r.Checkpoint = dir
	return rs, nil
}

// writeFile replaces path atomically.
func writeFile(path string, data []byte) error {
	tmp := path + ".kybernate.tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
