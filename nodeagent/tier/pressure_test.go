package tier

import (
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/types"
	compmetrics "k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/testutil"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/metrics"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

func TestPressurePlan(t *testing.T) {
	at := func(m int) time.Time { return epoch.Add(time.Duration(m) * time.Minute) }
	now := at(60)
	images := []Stored{
		{OnDisk: OnDisk{UID: "new", Since: at(30)}, Bytes: 10},
		{OnDisk: OnDisk{UID: "old", Since: at(1)}, Bytes: 10},
		{OnDisk: OnDisk{UID: "mid", Since: at(10)}, Bytes: 10},
		{OnDisk: OnDisk{UID: "backing-off", Since: at(0), NotBefore: at(61)}, Bytes: 100},
	}
	tests := []struct {
		name       string
		used, mark int64
		want       []types.UID
		enough     bool
	}{
		{name: "under the mark", used: 50, mark: 50, enough: true},
		{name: "the oldest is enough", used: 55, mark: 50, want: []types.UID{"old"}, enough: true},
		{name: "oldest first until under", used: 70, mark: 50, want: []types.UID{"old", "mid"}, enough: true},
		// The image in backoff is not tried before its time, even though it alone would do.
		{name: "not enough", used: 100, mark: 50, want: []types.UID{"old", "mid", "new"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, enough := PressurePlan(images, now, tt.used, tt.mark)
			if diff := cmp.Diff(tt.want, got); diff != "" || enough != tt.enough {
				t.Errorf("PressurePlan (-want +got):\n%s enough %v, want %v", diff, enough, tt.enough)
			}
		})
	}
}

// fakeFilesystem is the disk tier's filesystem as the tests see it: size bytes, of which base
// are used by others, plus what the tier's folder holds.
type fakeFilesystem struct {
	dir        string
	size, base int64
}

func (f *fakeFilesystem) usage(path string) (int64, int64, error) {
	used := f.base
	err := filepath.WalkDir(f.dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			used += info.Size()
		}
		return nil
	})
	return f.size, used, err
}

// withDiskMark sets the disk mark on the fixture's manager and a filesystem where the spilled
// image alone passes it.
func withDiskMark(t *testing.T, f *fixture, mark string) *fakeFilesystem {
	t.Helper()
	metrics.Register()
	hw, err := ParseThreshold(mark)
	if err != nil {
		t.Fatal(err)
	}
	f.mgr.cfg.DiskHighWater = hw
	fs := &fakeFilesystem{dir: DiskTierRoot(f.dir), size: 100 << 20, base: 80 << 20}
	f.mgr.SetFilesystem(fs.usage)
	return fs
}

func gauge(t *testing.T, g compmetrics.GaugeMetric) float64 {
	t.Helper()
	v, err := testutil.GetGaugeMetricValue(g)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Above the disk mark an image moves to object storage at once, long before --disk-tier-idle.
func TestDiskPressureUploads(t *testing.T) {
	f := newFixture(t, "5Gi")
	withDiskMark(t, f, "80Mi") // 80Mi used by others: the image passes it
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierObjectStore {
		t.Fatalf("pod in %s after a reconcile above the disk mark, want ObjectStore", got)
	}
	if ev := f.event(EventUploadedToObjectStore); !strings.Contains(ev, "above its high-water mark") {
		t.Errorf("Event %q does not say why the image moved", ev)
	}
	if ids := images(t, f.mgr.disk); len(ids) != 0 {
		t.Errorf("disk copies left: %v", ids)
	}
	if v := gauge(t, metrics.DiskTierAboveHighWater); v != 0 {
		t.Errorf("disk_tier_above_high_water %v after the upload brought it under, want 0", v)
	}
	if v := gauge(t, metrics.DiskTierHighWaterBytes); v != 80<<20 {
		t.Errorf("disk_tier_high_water_bytes %v, want 80Mi", v)
	}
}

// A share of the filesystem: under the mark nothing moves before --disk-tier-idle.
func TestDiskUnderMarkWaitsForIdle(t *testing.T) {
	f := newFixture(t, "5Gi")
	withDiskMark(t, f, "90%")
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierDisk {
		t.Fatalf("pod in %s under the disk mark, want Disk", got)
	}
}

// Without an object store the agent says so (Event on the GPUNode once per crossing, metric)
// and deletes nothing.
func TestDiskPressureWithoutObjectStore(t *testing.T) {
	f := newFixture(t, "5Gi")
	fs := withDiskMark(t, f, "80Mi")
	f.mgr.objects = nil
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierDisk {
		t.Fatalf("pod in %s, want Disk", got)
	}
	if ev := f.event(EventDiskTierHighWater); !strings.Contains(ev, "no object store") || !strings.Contains(ev, "nothing is deleted") {
		t.Errorf("Event %q does not say that no object store is configured", ev)
	}
	if ids := images(t, f.mgr.disk); len(ids) != 1 {
		t.Errorf("images on disk %v, want the spilled one", ids)
	}
	if v := gauge(t, metrics.DiskTierAboveHighWater); v != 1 {
		t.Errorf("disk_tier_above_high_water %v, want 1", v)
	}
	f.mgr.Reconcile(t.Context())
	for len(f.events.Events) > 0 {
		if ev := <-f.events.Events; strings.Contains(ev, EventDiskTierHighWater) {
			t.Errorf("a second Event while still above the mark: %q", ev)
		}
	}
	fs.base = 0
	f.mgr.Reconcile(t.Context())
	f.event(EventDiskTierUnderHighWater)
	if v := gauge(t, metrics.DiskTierAboveHighWater); v != 0 {
		t.Errorf("disk_tier_above_high_water %v under the mark, want 0", v)
	}
}

// Uploads that fail leave the image on disk and the pressure reported.
func TestDiskPressureUploadFails(t *testing.T) {
	f := newFixture(t, "5Gi")
	withDiskMark(t, f, "80Mi")
	f.objects.down = true
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierDisk {
		t.Fatalf("pod in %s with the object store down, want Disk", got)
	}
	if ev := f.event(EventDiskTierHighWater); !strings.Contains(ev, "after uploading") {
		t.Errorf("Event %q", ev)
	}
	// Backoff: the next reconcile does not try again before its time, the one after it does.
	f.objects.down = false
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierDisk {
		t.Fatalf("pod in %s before its retry time, want Disk", got)
	}
	f.clk.Step(time.Minute)
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierObjectStore {
		t.Fatalf("pod in %s after the backoff, want ObjectStore", got)
	}
}

func images(t *testing.T, tier storage.Tier) []storage.ImageID {
	t.Helper()
	ids, err := storage.ListImages(t.Context(), tier)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}
