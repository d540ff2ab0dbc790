// Package metrics holds the node agent's Prometheus metrics, registered in component-base's
// legacy registry that the agent serves on /metrics next to the client-go and workqueue ones.
package metrics

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

const subsystem = "kybernate_agent"

// Labels values.
const (
	// OperationSuspend and the others are the values of the operation label.
	OperationSuspend = "suspend"
	OperationResume  = "resume"

	// ResultSuccess and ResultFailure are the values of the result label.
	ResultSuccess = "success"
	ResultFailure = "failure"

	// WriteGPUNode and WriteNode are the values of the object label of StatusWrites.
	WriteGPUNode = "gpunode"
	WriteNode    = "node"
)

var (
	// OperationDuration is how long suspends and resumes of pods take, end to end.
	OperationDuration = metrics.NewHistogramVec(&metrics.HistogramOpts{
		Subsystem:      subsystem,
		Name:           "operation_duration_seconds",
		Help:           "Duration of suspend and resume operations on pods, by operation and result.",
		Buckets:        metrics.ExponentialBuckets(0.01, 2, 16), // 10ms .. ~5.5min
		StabilityLevel: metrics.ALPHA,
	}, []string{"operation", "result"})

	// OperationBytes is the GPU memory each successful suspend or resume moved.
	OperationBytes = metrics.NewHistogramVec(&metrics.HistogramOpts{
		Subsystem:      subsystem,
		Name:           "operation_bytes",
		Help:           "GPU memory moved by each successful suspend (to host memory) or resume (to GPUs), in bytes.",
		Buckets:        metrics.ExponentialBuckets(64<<20, 2, 12), // 64 MiB .. 128 GiB
		StabilityLevel: metrics.ALPHA,
	}, []string{"operation"})

	// OperationThroughput is the rate of each successful suspend or resume that moved memory:
	// bytes over the whole operation's duration (lock and unlock included), the figure that
	// bounds how fast pods can take turns.
	OperationThroughput = metrics.NewHistogramVec(&metrics.HistogramOpts{
		Subsystem:      subsystem,
		Name:           "operation_throughput_bytes_per_second",
		Help:           "GPU memory moved per second by each successful suspend or resume that moved memory, end to end.",
		Buckets:        metrics.ExponentialBuckets(100e6, 2, 12), // 100 MB/s .. ~205 GB/s
		StabilityLevel: metrics.ALPHA,
	}, []string{"operation"})

	// BytesMoved is GPU memory moved between GPUs and host memory.
	BytesMoved = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      subsystem,
		Name:           "bytes_moved_total",
		Help:           "GPU memory moved by suspend (to host memory) and resume (to GPUs), in bytes.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"operation"})

	// Failures counts failed operations by cause (e.g. LockTimeout, CheckpointFailed,
	// HostMemoryExhausted).
	Failures = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      subsystem,
		Name:           "operation_failures_total",
		Help:           "Failed suspend and resume operations, by operation and cause.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"operation", "cause"})

	// ParkedBytes is the GPU memory of suspended pods held in host memory, per node.
	ParkedBytes = metrics.NewGaugeVec(&metrics.GaugeOpts{
		Subsystem:      subsystem,
		Name:           "parked_bytes",
		Help:           "GPU memory of suspended pods held in host memory, in bytes, per node.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"node"})

	// StatusWrites counts writes of GPUNode status and node capacity.
	StatusWrites = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      subsystem,
		Name:           "status_writes_total",
		Help:           "Writes of GPUNode objects and node capacity, by object and result.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"object", "result"})

	// InventoryErrors counts failed reads of a node's GPU inventory.
	InventoryErrors = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      subsystem,
		Name:           "inventory_errors_total",
		Help:           "Failed reads of a node's GPU inventory (NVML), per node.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"node"})
)

// Reasons of checkpoint image deletions (the label reason; package imagegc uses them).
const (
	ImageDeletedRestored = "Restored"
	ImageDeletedExpired  = "Expired"
)

// Checkpoint images (--checkpoint-dir), set by each scan of package imagegc.
var (
	// CheckpointImageBytes is the size of the images the agent looks after.
	CheckpointImageBytes = metrics.NewGauge(&metrics.GaugeOpts{
		Subsystem:      subsystem,
		Name:           "checkpoint_image_bytes",
		Help:           "Bytes of the checkpoint images in --checkpoint-dir that this agent looks after (its nodes' images and unfinished ones).",
		StabilityLevel: metrics.ALPHA,
	})
	// CheckpointImages is how many images the agent looks after.
	CheckpointImages = metrics.NewGauge(&metrics.GaugeOpts{
		Subsystem:      subsystem,
		Name:           "checkpoint_images",
		Help:           "Checkpoint images in --checkpoint-dir that this agent looks after.",
		StabilityLevel: metrics.ALPHA,
	})
	// CheckpointDirFilesystemBytes is the size and the space left of the filesystem of
	// --checkpoint-dir.
	CheckpointDirFilesystemBytes = metrics.NewGaugeVec(&metrics.GaugeOpts{
		Subsystem:      subsystem,
		Name:           "checkpoint_dir_filesystem_bytes",
		Help:           "Size (kind=size) and space available to the agent (kind=available) of the filesystem of --checkpoint-dir, in bytes.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"kind"})
	// CheckpointImagesDeleted counts deleted images by reason (Restored, Expired).
	CheckpointImagesDeleted = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      subsystem,
		Name:           "checkpoint_images_deleted_total",
		Help:           "Checkpoint images deleted, by reason: Restored (the pod restored from it runs) or Expired (unused for --image-ttl).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"reason"})
	// CheckpointImageBytesDeleted counts the bytes of deleted images by reason.
	CheckpointImageBytesDeleted = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      subsystem,
		Name:           "checkpoint_image_deleted_bytes_total",
		Help:           "Bytes of the checkpoint images deleted, by reason.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"reason"})
)

// Values of the tier labels of the storage tier metrics: where parked memory is kept, and GPU
// for the moves that bring it back.
const (
	TierHostMemory  = "HostMemory"
	TierDisk        = "Disk"
	TierObjectStore = "ObjectStore"
	TierGPU         = "GPU"
)

// TierMoves are the (from, to) pairs of the moves the tier policy makes.
var TierMoves = [][2]string{{TierHostMemory, TierDisk}, {TierDisk, TierObjectStore}, {TierDisk, TierGPU}, {TierObjectStore, TierGPU}}

// Storage tiers (package tier).
var (
	// TierImages is how many suspended pods' memory each tier below host memory holds.
	TierImages = metrics.NewGaugeVec(&metrics.GaugeOpts{
		Subsystem:      subsystem,
		Name:           "tier_images",
		Help:           "Checkpoint images of suspended pods of the agent's nodes kept in a storage tier below host memory (tier=Disk|ObjectStore).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"tier"})
	// TierBytes is the parked GPU memory each tier below host memory holds.
	TierBytes = metrics.NewGaugeVec(&metrics.GaugeOpts{
		Subsystem:      subsystem,
		Name:           "tier_bytes",
		Help:           "Parked GPU memory of suspended pods of the agent's nodes kept in a storage tier below host memory, in bytes, per tier.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"tier"})
	// TierMoveDuration is how long each move of a pod's memory between tiers took.
	TierMoveDuration = metrics.NewHistogramVec(&metrics.HistogramOpts{
		Subsystem:      subsystem,
		Name:           "tier_move_duration_seconds",
		Help:           "Duration of moves of a suspended pod's memory between tiers (from, to: HostMemory, Disk, ObjectStore, GPU), by result.",
		Buckets:        metrics.ExponentialBuckets(0.01, 2, 18), // 10ms .. ~22min
		StabilityLevel: metrics.ALPHA,
	}, []string{"from", "to", "result"})
	// TierMoveBytes counts the parked GPU memory of successful moves.
	TierMoveBytes = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      subsystem,
		Name:           "tier_move_bytes_total",
		Help:           "Parked GPU memory moved between tiers by successful moves, in bytes.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"from", "to"})
	// SpilledCreatesRefused counts the kubelet's creates of spilled containers the agent
	// refused because their pods were not resumed (real nodes).
	SpilledCreatesRefused = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      subsystem,
		Name:           "tier_spilled_creates_refused_total",
		Help:           "Creates of a spilled, suspended pod's container refused until the pod's Resume (real nodes), by the tier holding its image.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"tier"})
	// TierMoveFailures counts failed moves by cause.
	TierMoveFailures = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      subsystem,
		Name:           "tier_move_failures_total",
		Help:           "Failed moves of a suspended pod's memory between tiers, by from, to and cause; the memory stays where it was.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"from", "to", "cause"})
	// DiskTierUsedBytes and DiskTierHighWaterBytes are the used bytes of the filesystem holding
	// the disk tier and its mark (with --disk-tier-high-water).
	DiskTierUsedBytes = metrics.NewGauge(&metrics.GaugeOpts{
		Subsystem:      subsystem,
		Name:           "disk_tier_filesystem_used_bytes",
		Help:           "Used bytes of the filesystem holding the disk tier (--disk-tier-dir), set when --disk-tier-high-water is.",
		StabilityLevel: metrics.ALPHA,
	})
	DiskTierHighWaterBytes = metrics.NewGauge(&metrics.GaugeOpts{
		Subsystem:      subsystem,
		Name:           "disk_tier_high_water_bytes",
		Help:           "The disk tier's high-water mark (--disk-tier-high-water) in bytes of its filesystem.",
		StabilityLevel: metrics.ALPHA,
	})
	// DiskTierAboveHighWater is 1 while the disk tier stays above its mark after the uploads
	// the policy could make (no object store, or failing uploads).
	DiskTierAboveHighWater = metrics.NewGauge(&metrics.GaugeOpts{
		Subsystem:      subsystem,
		Name:           "disk_tier_above_high_water",
		Help:           "1 while the disk tier's filesystem stays above --disk-tier-high-water after the uploads the policy could make (no object store, or uploads failing); nothing is deleted.",
		StabilityLevel: metrics.ALPHA,
	})
	// OrphanImagesDeleted counts images of pods that no longer exist deleted by the sweep.
	OrphanImagesDeleted = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      subsystem,
		Name:           "tier_orphan_images_deleted_total",
		Help:           "Images in a storage tier (tier=Disk|ObjectStore) whose pod no longer exists, deleted by the agent's sweep after --tier-orphan-grace.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"tier"})
	// OrphanImages is how many images of pods that no longer exist the last sweep found, per
	// tier, deleted or waiting for their grace period.
	OrphanImages = metrics.NewGaugeVec(&metrics.GaugeOpts{
		Subsystem:      subsystem,
		Name:           "tier_orphan_images",
		Help:           "Images in a storage tier whose pod no longer exists, found by the last sweep and waiting for --tier-orphan-grace.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"tier"})
)

var registerOnce sync.Once

// Register registers the metrics in the legacy registry; later calls do nothing. The series
// of known label values start at zero, so that dashboards and alerts see them before the
// first suspend.
func Register() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(OperationDuration, OperationBytes, OperationThroughput, BytesMoved, Failures,
			ParkedBytes, StatusWrites, InventoryErrors,
			CheckpointImageBytes, CheckpointImages, CheckpointDirFilesystemBytes, CheckpointImagesDeleted, CheckpointImageBytesDeleted,
			TierImages, TierBytes, TierMoveDuration, TierMoveBytes, TierMoveFailures, SpilledCreatesRefused,
			DiskTierUsedBytes, DiskTierHighWaterBytes, DiskTierAboveHighWater, OrphanImagesDeleted, OrphanImages)
		for _, t := range []string{TierDisk, TierObjectStore} {
			TierImages.WithLabelValues(t)
			TierBytes.WithLabelValues(t)
			SpilledCreatesRefused.WithLabelValues(t)
			OrphanImagesDeleted.WithLabelValues(t)
			OrphanImages.WithLabelValues(t)
		}
		for _, f := range [][3]string{{TierHostMemory, TierDisk, "SpillFailed"}, {TierDisk, TierObjectStore, "UploadFailed"},
			{TierDisk, TierGPU, "FetchFailed"}, {TierDisk, TierGPU, "ImageCorrupt"}, {TierObjectStore, TierGPU, "FetchFailed"}, {TierObjectStore, TierGPU, "ImageCorrupt"}} {
			TierMoveFailures.WithLabelValues(f[0], f[1], f[2])
		}
		for _, mv := range TierMoves {
			for _, result := range []string{ResultSuccess, ResultFailure} {
				TierMoveDuration.WithLabelValues(mv[0], mv[1], result)
			}
			TierMoveBytes.WithLabelValues(mv[0], mv[1])
		}
		for _, op := range []string{OperationSuspend, OperationResume} {
			for _, result := range []string{ResultSuccess, ResultFailure} {
				OperationDuration.WithLabelValues(op, result)
			}
			OperationBytes.WithLabelValues(op)
			OperationThroughput.WithLabelValues(op)
			BytesMoved.WithLabelValues(op)
		}
		for _, reason := range []string{ImageDeletedRestored, ImageDeletedExpired} {
			CheckpointImagesDeleted.WithLabelValues(reason)
			CheckpointImageBytesDeleted.WithLabelValues(reason)
		}
		for _, object := range []string{WriteGPUNode, WriteNode} {
			for _, result := range []string{ResultSuccess, ResultFailure} {
				StatusWrites.WithLabelValues(object, result)
			}
		}
	})
}
