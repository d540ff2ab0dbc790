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

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/shim/spec"
)

// RuntimeName is the runtime containerd knows the shim by; the binary is
// containerd-shim-kybernate-v1.
const RuntimeName = "io.containerd.kybernate.v1"

// The CRI plugin's annotation that tells a pod's sandbox container from its containers.
const (
	criContainerType        = "io.kubernetes.cri.container-type"
	criContainerTypeSandbox = "sandbox"
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
			return New(inner, spec.LoadConfigFromEnv, spec.HostDevices{}), nil
		},
	})
}

// Service is the wrapped task service.
type Service struct {
	taskAPI.TaskService
	config  func() (spec.Config, error)
	devices spec.Devices

	mu sync.Mutex
	// restores are the containers created for a restore, by id: their Start runs CRIU.
	restores map[string]spec.Config
}

var _ taskAPI.TaskService = (*Service)(nil)

// New wraps inner. config loads the settings when a container needs them (a broken settings
// file fails only GPU and restore containers); devices reads the host's device nodes.
func New(inner taskAPI.TaskService, config func() (spec.Config, error), devices spec.Devices) *Service {
	return &Service{TaskService: inner, config: config, devices: devices, restores: map[string]spec.Config{}}
}

// RegisterTTRPC serves the wrapper, not the inner service.
func (s *Service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTaskService(server, s)
	return nil
}

// Create patches the bundle's spec for kybernate.io/ annotations, then creates the container.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	cfg, restore, err := s.prepare(ctx, r)
	if err != nil {
		log.G(ctx).WithError(err).WithField("id", r.ID).Error("kybernate: refusing to create container")
		return nil, errdefs.ToGRPC(err)
	}
	resp, err := s.TaskService.Create(ctx, r)
	if err == nil && restore {
		s.mu.Lock()
		s.restores[r.ID] = cfg
		s.mu.Unlock()
	}
	return resp, err
}

// Start starts a container; for one created for a restore that is `runc restore`, bounded by
// the CRIU timeout.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	s.mu.Lock()
	cfg, restore := s.restores[r.ID]
	if r.ExecID == "" {
		delete(s.restores, r.ID)
	}
	s.mu.Unlock()
	if !restore || r.ExecID != "" {
		return s.TaskService.Start(ctx, r)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.CRIUTimeout.Duration)
	defer cancel()
	resp, err := s.TaskService.Start(ctx, r)
	if err != nil && ctx.Err() != nil {
		return nil, errdefs.ToGRPCf(errdefs.ErrUnavailable, "restore did not finish within %s (criuTimeout): %v", cfg.CRIUTimeout.Duration, err)
	}
	return resp, err
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

// prepare patches the bundle's config.json. It reports the settings and whether the container
// is restored from an image. Without kybernate.io/ annotations it changes nothing.
func (s *Service) prepare(ctx context.Context, r *taskAPI.CreateTaskRequest) (spec.Config, bool, error) {
	path := filepath.Join(r.Bundle, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return spec.Config{}, false, fmt.Errorf("reading the bundle's spec: %w", err)
	}
	var sp specs.Spec
	if err := json.Unmarshal(data, &sp); err != nil {
		return spec.Config{}, false, fmt.Errorf("parsing %s: %w", path, err)
	}
	gpus, restoreFrom := sp.Annotations[kv1.AnnotationGPUs], sp.Annotations[kv1.AnnotationRestoreFrom]
	// CRI hands the pod's annotations to its sandbox (pause) container too: it gets neither
	// GPUs nor a restore.
	if sp.Annotations[criContainerType] == criContainerTypeSandbox {
		return spec.Config{}, false, nil
	}
	if gpus == "" && restoreFrom == "" {
		return spec.Config{}, false, nil
	}
	cfg, err := s.config()
	if err != nil {
		return spec.Config{}, false, err
	}
	logger := log.G(ctx).WithField("id", r.ID)
	if gpus != "" {
		uuids, err := spec.ParseGPUs(gpus)
		if err != nil {
			return spec.Config{}, false, fmt.Errorf("annotation %s: %w", kv1.AnnotationGPUs, err)
		}
		if err := spec.GPUs(&sp, uuids, cfg, s.devices); err != nil {
			return spec.Config{}, false, fmt.Errorf("exposing gpus %s: %w", gpus, err)
		}
		logger.WithField("gpus", uuids).WithField("deviceNodes", cfg.DeviceNodes).Info("kybernate: gpus exposed")
	}
	if restoreFrom != "" {
		if err := s.prepareRestore(r, &sp, restoreFrom, cfg); err != nil {
			return spec.Config{}, false, err
		}
		logger.WithField("image", restoreFrom).Info("kybernate: container is restored from a checkpoint image")
	}
	out, err := json.Marshal(&sp)
	if err != nil {
		return spec.Config{}, false, err
	}
	if err := writeFile(path, out); err != nil {
		return spec.Config{}, false, fmt.Errorf("writing the bundle's spec: %w", err)
	}
	return cfg, restoreFrom != "", nil
}

// prepareRestore checks the image and turns the create into a restore from it.
func (s *Service) prepareRestore(r *taskAPI.CreateTaskRequest, sp *specs.Spec, dir string, cfg spec.Config) error {
	if r.Checkpoint != "" {
		return fmt.Errorf("annotation %s=%s and a containerd checkpoint (%s) at once: %w", kv1.AnnotationRestoreFrom, dir, r.Checkpoint, errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("annotation %s=%q: want an absolute path: %w", kv1.AnnotationRestoreFrom, dir, errdefs.ErrInvalidArgument)
	}
	m, err := image.Verify(dir)
	if err != nil {
		if errors.Is(err, image.ErrMissing) {
			return fmt.Errorf("restore: %w: %w", err, errdefs.ErrNotFound)
		}
		return fmt.Errorf("restore: %w: %w", err, errdefs.ErrFailedPrecondition)
	}
	if len(m.GPUs) > 0 {
		// The seam for migration: a GPU image needs the agent's Restore between runc restore
		// and the start (the process's GPU memory back onto the assigned GPUs).
		return fmt.Errorf("restore: image %s holds GPU memory (gpus %v): restoring GPU containers from images is not implemented yet (migration work): %w", dir, m.GPUs, errdefs.ErrNotImplemented)
	}
	conf := filepath.Join(r.Bundle, restoreConfigFile)
	if err := writeFile(conf, spec.CRIURestoreConfig(cfg)); err != nil {
		return fmt.Errorf("restore: writing criu settings: %w", err)
	}
	spec.Restore(sp, conf)

	// runc restore writes its logs into the work folder, by default the image: keep the image
	// as it was (it may be restored again, or be read-only).
	opts := &options.Options{}
	if r.Options.GetValue() != nil {
		v, err := typeurl.UnmarshalAny(r.Options)
		if err != nil {
			return fmt.Errorf("runtime options: %w", err)
		}
		o, ok := v.(*options.Options)
		if !ok {
			return fmt.Errorf("runtime options of type %s, want runc's options: %w", r.Options.GetTypeUrl(), errdefs.ErrInvalidArgument)
		}
		opts = o
	}
	if opts.CriuWorkPath == "" {
		opts.CriuWorkPath = filepath.Join(r.Bundle, restoreWorkDir)
	}
	if err := os.MkdirAll(opts.CriuWorkPath, 0o700); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	a, err := typeurl.MarshalAny(opts)
	if err != nil {
		return err
	}
	r.Options = protobuf.FromAny(a)
	r.Checkpoint = dir
	return nil
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
