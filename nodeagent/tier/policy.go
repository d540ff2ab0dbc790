package tier

import (
	"cmp"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/types"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// Parked is a suspended pod whose memory is in host memory.
type Parked struct {
	UID   types.UID
	Bytes int64
	// Since is when the pod was suspended.
	Since time.Time
}

// SpillPlan chooses the pods to spill to disk so that the memory parked in host memory plus
// need stays at or under mark: least recently suspended first (the one least likely to be
// resumed soon). It returns the pods in the order to spill them and whether spilling all of
// them is enough.
func SpillPlan(pods []Parked, need, mark int64) ([]types.UID, bool) {
	var parked int64
	for _, p := range pods {
		parked += p.Bytes
	}
	if parked+need <= mark {
		return nil, true
	}
	order := slices.Clone(pods)
	slices.SortStableFunc(order, func(a, b Parked) int {
		return oldestFirst(a.Since, a.UID, b.Since, b.UID)
	})
	var out []types.UID
	for _, p := range order {
		if parked+need <= mark {
			break
		}
		if p.Bytes <= 0 {
			continue
		}
		out = append(out, p.UID)
		parked -= p.Bytes
	}
	return out, parked+need <= mark
}

// OnDisk is an image in the disk tier.
type OnDisk struct {
	UID types.UID
	// Since is when it was written to disk.
	Since time.Time
	// NotBefore is the earliest next try after a failed upload.
	NotBefore time.Time
}

// UploadsDue returns the images on disk longer than idle at now whose retry time has come,
// oldest first. idle 0 uploads nothing.
func UploadsDue(images []OnDisk, now time.Time, idle time.Duration) []types.UID {
	if idle <= 0 {
		return nil
	}
	due := slices.DeleteFunc(slices.Clone(images), func(i OnDisk) bool {
		return now.Sub(i.Since) < idle || now.Before(i.NotBefore)
	})
	slices.SortStableFunc(due, func(a, b OnDisk) int {
		return oldestFirst(a.Since, a.UID, b.Since, b.UID)
	})
	out := make([]types.UID, len(due))
	for i := range due {
		out[i] = due[i].UID
	}
	return out
}

// oldestFirst orders by time, then by UID for a stable order among equal times.
func oldestFirst(aSince time.Time, aUID types.UID, bSince time.Time, bUID types.UID) int {
	if c := aSince.Compare(bSince); c != 0 {
		return c
	}
	return cmp.Compare(aUID, bUID)
}

// Backoff is the wait after the n-th failed move in a row (n >= 1): base doubled n-1 times, at
// most max.
func Backoff(n int, base, max time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// Asleep is a suspended pod in host memory as the sleep rule sees it.
type Asleep struct {
	UID types.UID
	// Reason is the reason of the suspension that parked its memory (its last Suspend).
	Reason kv1.CheckpointReason
	// Depth is the pod's kybernate.io/sleep.
	Depth kv1.SleepDepth
	// WakePending: a request asked for the pod to wake since that suspension.
	WakePending bool
	// NotBefore is the earliest next try after a failed spill.
	NotBefore time.Time
}

// SleepSpills chooses the pods to spill to disk at now because they sleep deep: put to sleep
// for idleness (reason Idle) with kybernate.io/sleep Disk, not asked to wake since (a spill
// then would only slow the wake down), and not waiting out the backoff of a failed spill. The
// high-water mark plays no part: such a pod goes to disk however much host memory is free.
// The pods come in the order given.
func SleepSpills(pods []Asleep, now time.Time) []types.UID {
	var out []types.UID
	for _, p := range pods {
		if p.Reason == kv1.ReasonIdle && p.Depth == kv1.SleepDisk && !p.WakePending && !now.Before(p.NotBefore) {
			out = append(out, p.UID)
		}
	}
	return out
}
