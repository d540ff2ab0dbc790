package app

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	logsapi "k8s.io/component-base/logs/api/v1"

	"github.com/kybernate/kybernate/internal/daemon"

	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/status"
	"github.com/kybernate/kybernate/nodeagent/thp"
	"github.com/kybernate/kybernate/nodeagent/tier"
)

// Options are the agent's flags.
type Options struct {
	daemon.Client
	NodeName string

	SlotsPerGPU       int32
	HostMemoryReserve resource.Quantity
	HostMemoryStep    resource.Quantity
	PollInterval      time.Duration
	StatusMinInterval time.Duration
	ProcRoot          string

	Socket             string
	MetricsBindAddress string
	ContainerdSocket   string
	CheckpointDir      string
	ImageTTL           time.Duration
	ImageGCInterval    time.Duration

	LockTimeout    time.Duration
	StepTimeout    time.Duration
	DumpTimeout    time.Duration
	RestoreRetries int
	RestoreMargin  resource.Quantity
	Workers        int

	// THPWindow opens a transparent huge page window around checkpoints (package thp);
	// THPWindowDefrag is the defrag value in the window (empty: defrag is left alone).
	THPWindow       bool
	THPWindowDefrag string
	THPDir          string
	StateDir        string
	// hugePages is the window startTHP made; nil without --thp-window.
	hugePages *thp.Window

	// Tiers is the storage tier policy; ObjectStoreSecret names the object store's Secret
	// (namespace/name), empty for none.
	Tiers             tier.Config
	ObjectStoreSecret string

	Simulate               bool
	SimulateNodeSelector   string
	SimulateProgressPeriod time.Duration
	SimulateCheckpointRate resource.Quantity
	SimulateRestoreRate    resource.Quantity

	Logs *logsapi.LoggingConfiguration
}

// NewOptions returns the defaults.
func NewOptions() *Options {
	return &Options{
		NodeName:               os.Getenv("NODE_NAME"),
		Client:                 daemon.DefaultClient(),
		SlotsPerGPU:            status.DefaultSlotsPerGPU,
		HostMemoryReserve:      resource.MustParse("8Gi"),
		HostMemoryStep:         resource.MustParse("1Gi"),
		PollInterval:           2 * time.Second,
		StatusMinInterval:      time.Second,
		ProcRoot:               "/proc",
		Socket:                 "/run/kybernate/agent.sock",
		ContainerdSocket:       "/run/containerd/containerd.sock",
		MetricsBindAddress:     ":9464",
		LockTimeout:            10 * time.Second,
		StepTimeout:            5 * time.Minute,
		DumpTimeout:            10 * time.Minute,
		ImageTTL:               24 * time.Hour,
		ImageGCInterval:        time.Minute,
		RestoreRetries:         3,
		RestoreMargin:          *resource.NewQuantity(engine.DefaultRestoreMargin, resource.BinarySI),
		Workers:                16,
		THPDir:                 thp.DefaultDir,
		StateDir:               "/run/kybernate",
		SimulateNodeSelector:   "type=kwok",
		SimulateProgressPeriod: 2 * time.Second,
		// Measured on H200, driver 580: checkpoint ~2.2 GB/s, restore ~6 GB/s.
		SimulateCheckpointRate: resource.MustParse("2.2G"),
		SimulateRestoreRate:    resource.MustParse("6G"),
		Logs:                   logsapi.NewLoggingConfiguration(),
		Tiers: tier.Config{
			DiskIdle:      30 * time.Minute,
			Interval:      10 * time.Second,
			MoveTimeout:   30 * time.Minute,
			RetryBackoff:  10 * time.Second,
			MaxBackoff:    10 * time.Minute,
			KeySecret:     "kybernate-image-key",
			SweepInterval: 10 * time.Minute,
			OrphanGrace:   10 * time.Minute,
			// Well under the kubelet's 2m --runtime-request-timeout, which bounds a create.
			CreateHold: time.Minute,
			// The kubelet's restart back-off reaches 5m; a create comes at most that long (plus
			// a hold and its 10s sync period) after the last.
			RecreateTimeout: 10 * time.Minute,
		},
	}
}

// AddFlags adds the agent's flags to fs.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	o.Client.AddFlags(fs)
	fs.StringVar(&o.NodeName, "node-name", o.NodeName, "The node this agent serves (default: $NODE_NAME). Not used with --simulate.")

	fs.Int32Var(&o.SlotsPerGPU, "slots-per-gpu", o.SlotsPerGPU, "Pods that may be bound to one GPU at once, resident or suspended (1..64). "+
		"The node advertises GPUs x slots of kybernate.io/gpu. The default 2 lets one pod run while one is parked; "+
		"with 1 a suspended pod keeps the only slot and suspension frees nothing.")
	fs.Var(&quantityValue{&o.HostMemoryReserve}, "host-memory-reserve", "Host memory never offered for parking GPU memory of suspended pods.")
	fs.Var(&quantityValue{&o.HostMemoryStep}, "host-memory-step", "Least change of parkable host memory written to the GPUNode (MemAvailable moves constantly).")
	fs.DurationVar(&o.PollInterval, "poll-interval", o.PollInterval, "How often NVML is read; NVML has no events for memory use. The GPUNode is written only on change.")
	fs.DurationVar(&o.StatusMinInterval, "status-min-interval", o.StatusMinInterval, "Least time between two writes of one node's GPUNode status.")
	fs.StringVar(&o.ProcRoot, "proc-root", o.ProcRoot, "Where the host's /proc is (the agent runs with hostPID).")

	fs.StringVar(&o.Socket, "socket", o.Socket, "Unix socket of the agent's gRPC API (mode 0600, root peers only); empty disables it.")
	fs.StringVar(&o.ContainerdSocket, "containerd-socket", o.ContainerdSocket, "containerd's socket, to find the pod of a container (namespace k8s.io) when its cgroup path does not name it; empty disables it. Not used with --simulate.")
	fs.StringVar(&o.CheckpointDir, "checkpoint-dir", o.CheckpointDir, "Folder the agent writes checkpoint images into (GPUCheckpoint action Checkpoint), one folder per image; "+
		"for migrations it must be one all nodes read (a shared mount). Empty: no checkpoint images.")
	fs.DurationVar(&o.ImageTTL, "image-ttl", o.ImageTTL, "How long a checkpoint image in --checkpoint-dir that no pod or GPUCheckpoint uses is kept (an image is deleted at once when the pod restored from it runs). "+
		"Must exceed --dump-timeout, so that an image being written is never taken for a leftover.")
	fs.DurationVar(&o.ImageGCInterval, "image-gc-interval", o.ImageGCInterval, "How often --checkpoint-dir is scanned for images to delete and its disk use measured.")
	fs.StringVar(&o.MetricsBindAddress, "metrics-bind-address", o.MetricsBindAddress, "Address of the HTTP server for /metrics and /healthz; empty disables it.")

	fs.DurationVar(&o.LockTimeout, "lock-timeout", o.LockTimeout, "How long a suspend waits for a process's in-flight GPU work before it gives up.")
	fs.DurationVar(&o.StepTimeout, "step-timeout", o.StepTimeout, "Limit of each checkpoint or restore step.")
	fs.DurationVar(&o.DumpTimeout, "dump-timeout", o.DumpTimeout, "Limit of the CRIU dump of a container checkpoint (through containerd and the shim).")
	fs.IntVar(&o.RestoreRetries, "restore-retries", o.RestoreRetries, "Attempts of a refused restore before a resume is reported failed.")
	fs.Var(&quantityValue{&o.RestoreMargin}, "restore-margin", "Free GPU memory a restore must leave on each target GPU beyond the footprint the pod's processes had there "+
		"before their checkpoint. Below it the agent refuses the restore (InsufficientGPUMemory, retryable) without calling the driver: "+
		"a restore the driver refuses for lack of memory destroys the process's GPU state.")
	fs.IntVar(&o.Workers, "checkpoint-workers", o.Workers, "GPUCheckpoints carried out in parallel (each moves one pod).")
	fs.BoolVar(&o.THPWindow, "thp-window", o.THPWindow, "Set the node's transparent huge pages (--thp-dir/enabled) to always while checkpoints run, and back afterwards: "+
		"the driver's checkpoint buffers then get huge pages (checkpoint ~1.5x, restore ~1.3x faster), but so does every other process that maps "+
		"anonymous memory during the window. Concurrent checkpoints share one window; the previous values are kept in --state-dir and put back at start "+
		"by an agent that follows one that died with the window open.")
	fs.StringVar(&o.THPWindowDefrag, "thp-window-defrag", o.THPWindowDefrag, "With --thp-window: the value of --thp-dir/defrag in the window (e.g. defer+madvise); empty leaves defrag alone.")
	fs.StringVar(&o.THPDir, "thp-dir", o.THPDir, "The kernel's transparent huge page settings (sysfs).")
	fs.StringVar(&o.StateDir, "state-dir", o.StateDir, "Folder for the agent's own state that must outlive it but not the boot (the THP window's previous settings).")

	fs.Var(&o.Tiers.HighWater, "parked-memory-high-water", "Storage tiers: memory of suspended pods parked in host memory per node (their GPU memory; on a real node also the resident memory of frozen pods "+
		"without GPUs) above which the least recently suspended pods are spilled to --disk-tier-dir (and before a suspend that would pass it): "+
		"a quantity (200Gi) or a share of the node's memory (60%). Empty: no tiers.")
	fs.StringVar(&o.Tiers.DiskDir, "disk-tier-dir", o.Tiers.DiskDir, "Storage tiers: absolute folder on the node for spilled images, encrypted (needed with --parked-memory-high-water).")
	fs.DurationVar(&o.Tiers.DiskIdle, "disk-tier-idle", o.Tiers.DiskIdle, "Storage tiers: how long an image stays on disk before it moves to object storage (with --object-store-secret); 0 keeps images on disk.")
	fs.Var(&o.Tiers.DiskHighWater, "disk-tier-high-water", "Storage tiers: used bytes of the filesystem holding --disk-tier-dir above which images move to object storage, "+
		"the longest on disk first, until it is under again: a quantity (500Gi) or a share of the filesystem (80%). Without --object-store-secret the agent reports it (Event, metric) and deletes nothing. Empty: only --disk-tier-idle moves images.")
	fs.DurationVar(&o.Tiers.SweepInterval, "tier-sweep-interval", o.Tiers.SweepInterval, "Storage tiers: how often the images on disk and in object storage are matched against the pods that exist (and once at start).")
	fs.DurationVar(&o.Tiers.OrphanGrace, "tier-orphan-grace", o.Tiers.OrphanGrace, "Storage tiers: how long an image whose pod no longer exists (and that no pod references) is kept before it is deleted.")
	fs.StringVar(&o.ObjectStoreSecret, "object-store-secret", o.ObjectStoreSecret, "Storage tiers: namespace/name of the Secret with the S3-compatible object store "+
		"(endpoint, bucket, region, pathStyle, tls, caBundle, prefix, accessKeyID, secretAccessKey, sessionToken). Empty: no object storage.")
	fs.StringVar(&o.Tiers.KeySecret, "image-key-secret", o.Tiers.KeySecret, "Storage tiers: name of the Secret in each pod's namespace holding the namespace's image key (data key \"key\", 32 bytes).")
	fs.DurationVar(&o.Tiers.Interval, "tier-interval", o.Tiers.Interval, "Storage tiers: how often the policy looks at every node.")
	fs.DurationVar(&o.Tiers.MoveTimeout, "tier-move-timeout", o.Tiers.MoveTimeout, "Storage tiers: limit of one move of a pod's memory between tiers (spill, upload, fetch and restore).")
	fs.DurationVar(&o.Tiers.RetryBackoff, "tier-retry-backoff", o.Tiers.RetryBackoff, "Storage tiers: wait after a failed move; it doubles with every failure in a row.")
	fs.DurationVar(&o.Tiers.MaxBackoff, "tier-max-backoff", o.Tiers.MaxBackoff, "Storage tiers: the longest wait between tries of a failing move.")
	fs.DurationVar(&o.Tiers.CreateHold, "spilled-create-hold", o.Tiers.CreateHold, "Storage tiers, real nodes: how long the kubelet's create of a spilled, suspended pod's container "+
		"waits for the pod's Resume before it is refused (the kubelet then backs off and tries again); keep it well under the kubelet's --runtime-request-timeout (2m).")
	fs.DurationVar(&o.Tiers.RecreateTimeout, "spilled-recreate-timeout", o.Tiers.RecreateTimeout, "Storage tiers, real nodes: how long a Resume of a spilled pod waits for the kubelet to create "+
		"its container again (its restart back-off reaches 5m) before the resume fails and the pod stays spilled.")

	fs.BoolVar(&o.Simulate, "simulate", o.Simulate, "Simulate the GPUs of the nodes --simulate-node-selector picks (kwok nodes): mock NVML machines, "+
		"a fake CUDA driver, checkpoint times from --simulate-*-rate. Nothing touches a real GPU; every GPUNode says Simulated=True.")
	fs.StringVar(&o.SimulateNodeSelector, "simulate-node-selector", o.SimulateNodeSelector, "Label selector of the nodes to simulate.")
	fs.DurationVar(&o.SimulateProgressPeriod, "simulate-progress-period", o.SimulateProgressPeriod, "How often simulated pods' progress annotation ("+
		"sim.kybernate.io/progress) is written.")
	fs.Var(&quantityValue{&o.SimulateCheckpointRate}, "simulate-checkpoint-rate", "Bytes per second a simulated checkpoint moves to host memory.")
	fs.Var(&quantityValue{&o.SimulateRestoreRate}, "simulate-restore-rate", "Bytes per second a simulated restore moves back to GPUs.")

	logsapi.AddFlags(o.Logs, fs)
}

// Validate checks the options.
func (o *Options) Validate() error {
	var errs []error
	if !o.Simulate && o.NodeName == "" {
		errs = append(errs, errors.New("--node-name (or $NODE_NAME) is required without --simulate"))
	}
	if o.SlotsPerGPU < 1 || o.SlotsPerGPU > 64 {
		errs = append(errs, fmt.Errorf("--slots-per-gpu=%d: want 1..64", o.SlotsPerGPU))
	}
	if o.HostMemoryReserve.Sign() < 0 || o.HostMemoryStep.Sign() < 0 {
		errs = append(errs, errors.New("--host-memory-reserve and --host-memory-step must not be negative"))
	}
	if o.PollInterval <= 0 || o.StatusMinInterval < 0 || o.LockTimeout <= 0 || o.StepTimeout <= 0 || o.DumpTimeout <= 0 || o.SimulateProgressPeriod <= 0 {
		errs = append(errs, errors.New("--poll-interval, --lock-timeout, --step-timeout and --simulate-progress-period must be positive, --status-min-interval not negative"))
	}
	if o.CheckpointDir != "" && !filepath.IsAbs(o.CheckpointDir) {
		errs = append(errs, fmt.Errorf("--checkpoint-dir=%s: want an absolute path", o.CheckpointDir))
	}
	if o.ImageGCInterval <= 0 {
		errs = append(errs, fmt.Errorf("--image-gc-interval=%s: want a positive duration", o.ImageGCInterval))
	}
	if o.ImageTTL <= o.DumpTimeout {
		errs = append(errs, fmt.Errorf("--image-ttl=%s: want more than --dump-timeout=%s (an image being written must never look like a leftover)", o.ImageTTL, o.DumpTimeout))
	}
	if o.RestoreRetries < 1 {
		errs = append(errs, fmt.Errorf("--restore-retries=%d: want at least 1", o.RestoreRetries))
	}
	if o.RestoreMargin.Sign() < 0 || o.RestoreMargin.Value() > maxRestoreMargin {
		errs = append(errs, fmt.Errorf("--restore-margin=%s: want 0..16Gi", o.RestoreMargin.String()))
	}
	if o.Workers < 1 {
		errs = append(errs, fmt.Errorf("--checkpoint-workers=%d: want at least 1", o.Workers))
	}
	if o.THPWindow {
		if err := o.thpConfig().Validate(); err != nil {
			errs = append(errs, fmt.Errorf("--thp-window: %w", err))
		}
	} else if o.THPWindowDefrag != "" {
		errs = append(errs, errors.New("--thp-window-defrag needs --thp-window"))
	}
	if o.SimulateCheckpointRate.Sign() <= 0 || o.SimulateRestoreRate.Sign() <= 0 {
		errs = append(errs, errors.New("--simulate-checkpoint-rate and --simulate-restore-rate must be positive"))
	}
	if _, err := labels.Parse(o.SimulateNodeSelector); err != nil {
		errs = append(errs, fmt.Errorf("--simulate-node-selector: %w", err))
	}
	errs = append(errs, o.validateTiers())
	return errors.Join(errs...)
}

// validateTiers checks the storage tier flags.
func (o *Options) validateTiers() error {
	var errs []error
	if o.ObjectStoreSecret != "" {
		if ns, name, ok := strings.Cut(o.ObjectStoreSecret, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			errs = append(errs, fmt.Errorf("--object-store-secret=%q: want namespace/name", o.ObjectStoreSecret))
		}
	}
	if o.Tiers.Enabled() && !o.Simulate {
		errs = append(errs, o.validateContainerTiers(true))
	}
	if !o.Simulate && !o.Tiers.Enabled() && o.Tiers.DiskDir != "" {
		return errors.Join(append(errs, o.validateContainerTiers(false))...)
	}
	return errors.Join(append(errs, o.Tiers.Validate(o.ObjectStoreSecret != ""))...)
}

// validateContainerTiers checks the flags of a real node's storage tiers: the agent's Spill and
// the shim's FetchSpilled (package tier, Containers) and, with the policy, its holds.
func (o *Options) validateContainerTiers(policy bool) error {
	var errs []error
	if o.Tiers.CreateHold < 0 || o.Tiers.CreateHold >= 2*time.Minute {
		errs = append(errs, fmt.Errorf("--spilled-create-hold=%s: want 0 up to under the kubelet's --runtime-request-timeout (2m)", o.Tiers.CreateHold))
	}
	if o.Tiers.RecreateTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--spilled-recreate-timeout=%s: want a positive duration", o.Tiers.RecreateTimeout))
	}
	if !filepath.IsAbs(o.Tiers.DiskDir) {
		errs = append(errs, fmt.Errorf("--disk-tier-dir=%q: want an absolute folder on the node", o.Tiers.DiskDir))
	}
	if o.ContainerdSocket == "" {
		errs = append(errs, errors.New("--disk-tier-dir on a real node spills containers through containerd: --containerd-socket is required"))
	}
	if o.CheckpointDir == "" {
		errs = append(errs, errors.New("--disk-tier-dir on a real node needs --checkpoint-dir: the shim restores spilled containers only from images under it"))
	}
	if o.Tiers.DiskHighWater.IsSet() && !policy {
		errs = append(errs, errors.New("--disk-tier-high-water needs --parked-memory-high-water (the policy)"))
	}
	if o.Tiers.MoveTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--tier-move-timeout=%s: want a positive duration", o.Tiers.MoveTimeout))
	}
	if o.Tiers.KeySecret == "" {
		errs = append(errs, errors.New("--image-key-secret: spilled images are encrypted with a key per namespace and need the Secret's name"))
	}
	if o.Tiers.SweepInterval <= 0 || o.Tiers.OrphanGrace <= 0 || o.Tiers.Interval <= 0 {
		errs = append(errs, fmt.Errorf("--tier-sweep-interval=%s, --tier-orphan-grace=%s, --tier-interval=%s: want positive durations (the images of pods that are gone are swept)",
			o.Tiers.SweepInterval, o.Tiers.OrphanGrace, o.Tiers.Interval))
	}
	return errors.Join(errs...)
}

// engineConfig is the checkpoint engine's configuration from the flags.
func (o *Options) engineConfig() engine.Config {
	return engine.Config{
		LockTimeout:       o.LockTimeout,
		StepTimeout:       o.StepTimeout,
		RestoreRetries:    o.RestoreRetries,
		RetryBackoff:      time.Second,
		HostMemoryReserve: o.HostMemoryReserve.Value(),
		RestoreMargin:     o.RestoreMargin.Value(),
		HugePages:         o.hugePageWindow(),
	}
}

// hugePageWindow is the engines' window: nil (not a nil *thp.Window) without one.
func (o *Options) hugePageWindow() engine.HugePageWindow {
	if o.hugePages == nil {
		return nil
	}
	return o.hugePages
}

// thpConfig is the huge page window from the flags.
func (o *Options) thpConfig() thp.Config {
	values := map[string]string{thp.Enabled: "always"}
	if o.THPWindowDefrag != "" {
		values[thp.Defrag] = o.THPWindowDefrag
	}
	return thp.Config{Dir: o.THPDir, StateDir: o.StateDir, Values: values}
}

// maxRestoreMargin bounds --restore-margin: more would keep every pod from resuming on most
// GPUs and is certainly a typo.
const maxRestoreMargin = 16 << 30

// quantityValue is a pflag.Value for a resource.Quantity.
type quantityValue struct{ q *resource.Quantity }

func (v *quantityValue) String() string { return v.q.String() }
func (v *quantityValue) Type() string   { return "quantity" }
func (v *quantityValue) Set(s string) error {
	q, err := gpupod.ParseQuantity(s)
	if err != nil {
		return err
	}
	*v.q = q
	return nil
}
