package tier

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/types"
)

var epoch = time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC)

func TestSpillPlan(t *testing.T) {
	const gi = int64(1) << 30
	pods := []Parked{
		{UID: "new", Bytes: 10 * gi, Since: epoch.Add(3 * time.Minute)},
		{UID: "old", Bytes: 10 * gi, Since: epoch.Add(time.Minute)},
		{UID: "mid", Bytes: 4 * gi, Since: epoch.Add(2 * time.Minute)},
	}
	tests := []struct {
		name       string
		need, mark int64
		want       []types.UID
		enough     bool
	}{
		{name: "under the mark", need: 0, mark: 24 * gi, enough: true},
		{name: "exactly at the mark", need: 0, mark: 24 * gi, enough: true},
		{name: "over by a little spills the oldest", need: 0, mark: 23 * gi, want: []types.UID{"old"}, enough: true},
		{name: "a suspend that would pass it spills first", need: 8 * gi, mark: 24 * gi, want: []types.UID{"old"}, enough: true},
		{name: "oldest first until under", need: 8 * gi, mark: 12 * gi, want: []types.UID{"old", "mid", "new"}, enough: true},
		{name: "not enough even with all spilled", need: 30 * gi, mark: 24 * gi, want: []types.UID{"old", "mid", "new"}, enough: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, enough := SpillPlan(pods, tt.need, tt.mark)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
			if enough != tt.enough {
				t.Errorf("enough = %v, want %v", enough, tt.enough)
			}
		})
	}
}

func TestSpillPlanUnknownSuspendTimeFirst(t *testing.T) {
	pods := []Parked{{UID: "b", Bytes: 1, Since: epoch}, {UID: "a", Bytes: 1}}
	got, _ := SpillPlan(pods, 0, 1)
	if diff := cmp.Diff([]types.UID{"a"}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestUploadsDue(t *testing.T) {
	now := epoch.Add(time.Hour)
	images := []OnDisk{
		{UID: "fresh", Since: now.Add(-time.Minute)},
		{UID: "idle", Since: now.Add(-40 * time.Minute)},
		{UID: "older", Since: now.Add(-50 * time.Minute)},
		{UID: "backing-off", Since: now.Add(-50 * time.Minute), NotBefore: now.Add(time.Second)},
		{UID: "retry-now", Since: now.Add(-45 * time.Minute), NotBefore: now},
	}
	got := UploadsDue(images, now, 30*time.Minute)
	if diff := cmp.Diff([]types.UID{"older", "retry-now", "idle"}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if got := UploadsDue(images, now, 0); got != nil {
		t.Errorf("idle 0 uploads %v, want nothing", got)
	}
}

func TestBackoff(t *testing.T) {
	for n, want := range map[int]time.Duration{1: 10 * time.Second, 2: 20 * time.Second, 3: 40 * time.Second, 7: 5 * time.Minute, 50: 5 * time.Minute} {
		if got := Backoff(n, 10*time.Second, 5*time.Minute); got != want {
			t.Errorf("Backoff(%d) = %v, want %v", n, got, want)
		}
	}
}

func TestParseThreshold(t *testing.T) {
	const total = int64(1000) << 30
	tests := []struct {
		in      string
		bytes   int64
		wantErr string
	}{
		{in: "", bytes: 0},
		{in: "200Gi", bytes: 200 << 30},
		{in: " 1073741824 ", bytes: 1 << 30},
		{in: "60%", bytes: 600 << 30},
		{in: "12.5%", bytes: 125 << 30},
		{in: "100%", bytes: total},
		{in: "0%", wantErr: "above 0%"},
		{in: "101%", wantErr: "at most 100%"},
		{in: "x%", wantErr: "share"},
		{in: "0", wantErr: "more than 0"},
		{in: "-1Gi", wantErr: "more than 0"},
		{in: "lots", wantErr: "quantity"},
	}
	for _, tt := range tests {
		got, err := ParseThreshold(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseThreshold(%q) error %v, want one with %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseThreshold(%q): %v", tt.in, err)
			continue
		}
		if b := got.Bytes(total); b != tt.bytes {
			t.Errorf("ParseThreshold(%q).Bytes = %d, want %d", tt.in, b, tt.bytes)
		}
		if got.IsSet() != (tt.in != "") {
			t.Errorf("ParseThreshold(%q).IsSet = %v", tt.in, got.IsSet())
		}
	}
}

func TestConfigValidate(t *testing.T) {
	hw, _ := ParseThreshold("60%")
	good := Config{HighWater: hw, DiskDir: "/var/lib/kybernate/tiers", DiskIdle: time.Minute, Interval: time.Second,
		MoveTimeout: time.Minute, RetryBackoff: time.Second, MaxBackoff: time.Minute, KeySecret: "kybernate-image-key",
		DiskHighWater: hw, SweepInterval: time.Minute, OrphanGrace: 10 * time.Minute}
	tests := []struct {
		name        string
		mut         func(*Config)
		objectStore bool
		wantErr     string
	}{
		{name: "good", mut: func(*Config) {}},
		{name: "no disk mark", mut: func(c *Config) { c.DiskHighWater = Threshold{} }},
		{name: "off", mut: func(c *Config) { *c = Config{} }},
		{name: "object store without a mark", mut: func(c *Config) { *c = Config{} }, objectStore: true, wantErr: "need --parked-memory-high-water"},
		{name: "relative disk dir", mut: func(c *Config) { c.DiskDir = "tiers" }, wantErr: "--disk-tier-dir"},
		{name: "no disk dir", mut: func(c *Config) { c.DiskDir = "" }, wantErr: "--disk-tier-dir"},
		{name: "negative idle", mut: func(c *Config) { c.DiskIdle = -time.Second }, wantErr: "--disk-tier-idle"},
		{name: "no interval", mut: func(c *Config) { c.Interval = 0 }, wantErr: "--tier-interval"},
		{name: "no timeout", mut: func(c *Config) { c.MoveTimeout = 0 }, wantErr: "--tier-move-timeout"},
		{name: "backoff past max", mut: func(c *Config) { c.MaxBackoff = time.Millisecond }, wantErr: "--tier-max-backoff"},
		{name: "disk mark without a mark", mut: func(c *Config) { *c = Config{DiskHighWater: hw} }, wantErr: "--disk-tier-high-water"},
		{name: "no sweep interval", mut: func(c *Config) { c.SweepInterval = 0 }, wantErr: "--tier-sweep-interval"},
		{name: "no orphan grace", mut: func(c *Config) { c.OrphanGrace = -time.Second }, wantErr: "--tier-orphan-grace"},
		{name: "no key secret", mut: func(c *Config) { c.KeySecret = "" }, wantErr: "--image-key-secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.mut(&c)
			err := c.Validate(tt.objectStore)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error %v, want one with %q", err, tt.wantErr)
			}
		})
	}
}
