package tier

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
)

// Threshold is a mark: an absolute quantity ("200Gi") or a share of a total ("60%"): the
// node's memory for the parked-memory mark, the size of the filesystem holding the disk tier
// for the disk mark. The zero Threshold is unset.
type Threshold struct {
	bytes   int64
	percent float64
	set     bool
}

// ParseThreshold reads "200Gi", "214748364800" or "60%" (0 < percent <= 100). Empty is unset.
func ParseThreshold(s string) (Threshold, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Threshold{}, nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(p, 64)
		if err != nil || v <= 0 || v > 100 {
			return Threshold{}, fmt.Errorf("%q: want a share above 0%% and at most 100%%", s)
		}
		return Threshold{percent: v, set: true}, nil
	}
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return Threshold{}, fmt.Errorf("%q: want a quantity such as 200Gi or a share such as 60%%: %w", s, err)
	}
	if q.Sign() <= 0 {
		return Threshold{}, fmt.Errorf("%q: want more than 0", s)
	}
	return Threshold{bytes: q.Value(), set: true}, nil
}

// IsSet reports whether the threshold was given.
func (t Threshold) IsSet() bool { return t.set }

// Bytes is the mark for a total of total bytes.
func (t Threshold) Bytes(total int64) int64 {
	if t.percent > 0 {
		return int64(float64(total) * t.percent / 100)
	}
	return t.bytes
}

func (t Threshold) String() string {
	switch {
	case !t.set:
		return ""
	case t.percent > 0:
		return strconv.FormatFloat(t.percent, 'f', -1, 64) + "%"
	default:
		return resource.NewQuantity(t.bytes, resource.BinarySI).String()
	}
}

// Set implements pflag.Value.
func (t *Threshold) Set(s string) error {
	v, err := ParseThreshold(s)
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// Type implements pflag.Value.
func (t *Threshold) Type() string { return "quantity|percent" }

// Config is the tier policy of an agent.
type Config struct {
	// HighWater is the mark for GPU memory parked in host memory per node: above it the
	// least recently suspended pods are spilled to disk.
	HighWater Threshold
	// DiskDir is the disk tier: the folder the encrypted images are kept in on the node.
	DiskDir string
	// DiskHighWater is the mark for the filesystem holding DiskDir (its used bytes): above it
	// images on disk move to object storage, the longest on disk first, until it is under the
	// mark again. Unset: only DiskIdle moves images.
	DiskHighWater Threshold
	// DiskIdle is how long an image stays on disk before it moves to object storage; 0 keeps
	// images on disk.
	DiskIdle time.Duration
	// Interval is how often the policy looks at every node.
	Interval time.Duration
	// MoveTimeout bounds every move of one pod's memory between tiers.
	MoveTimeout time.Duration
	// RetryBackoff is the wait after the first failed move of a pod; it doubles up to
	// MaxBackoff.
	RetryBackoff, MaxBackoff time.Duration
	// SweepInterval is how often the images in the disk tier and object storage are matched
	// against the pods that exist, and OrphanGrace how long an image whose pod is gone is kept
	// before it is deleted.
	SweepInterval, OrphanGrace time.Duration
	// CreateHold is how long, on a real node, a create of a spilled pod's container waits for
	// the pod's Resume before it is refused; RecreateTimeout how long a Resume waits for the
	// kubelet to create the container again.
	CreateHold, RecreateTimeout time.Duration
	// KeySecret names the Secret, in each pod's namespace, holding the namespace's image key
	// (data key "key").
	KeySecret string
}

// Enabled reports whether the policy runs.
func (c Config) Enabled() bool { return c.HighWater.IsSet() }

// Validate checks c; flag names are used in the errors.
func (c Config) Validate(objectStore bool) error {
	if !c.Enabled() {
		if objectStore || c.DiskDir != "" || c.DiskHighWater.IsSet() {
			return errors.New("--disk-tier-dir, --disk-tier-high-water and --object-store-secret need --parked-memory-high-water: without a mark nothing moves out of host memory")
		}
		return nil
	}
	var errs []error
	if c.DiskDir == "" || !filepath.IsAbs(c.DiskDir) {
		errs = append(errs, fmt.Errorf("--disk-tier-dir=%q: the tier policy needs an absolute folder on the node for spilled images", c.DiskDir))
	}
	if c.DiskIdle < 0 {
		errs = append(errs, fmt.Errorf("--disk-tier-idle=%s: want 0 (images stay on disk) or a positive duration", c.DiskIdle))
	}
	if c.Interval <= 0 {
		errs = append(errs, fmt.Errorf("--tier-interval=%s: want a positive duration", c.Interval))
	}
	if c.MoveTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--tier-move-timeout=%s: want a positive duration", c.MoveTimeout))
	}
	if c.RetryBackoff <= 0 || c.MaxBackoff < c.RetryBackoff {
		errs = append(errs, fmt.Errorf("--tier-retry-backoff=%s, --tier-max-backoff=%s: want 0 < backoff <= max", c.RetryBackoff, c.MaxBackoff))
	}
	if c.SweepInterval <= 0 {
		errs = append(errs, fmt.Errorf("--tier-sweep-interval=%s: want a positive duration", c.SweepInterval))
	}
	if c.OrphanGrace <= 0 {
		errs = append(errs, fmt.Errorf("--tier-orphan-grace=%s: want a positive duration (an image whose pod is gone is kept this long)", c.OrphanGrace))
	}
	if c.KeySecret == "" {
		errs = append(errs, errors.New("--image-key-secret: the tier policy encrypts images with a key per namespace and needs the Secret's name"))
	}
	return errors.Join(errs...)
}
