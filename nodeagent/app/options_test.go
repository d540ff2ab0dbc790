package app

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     string
		wantErr string
	}{
		{name: "node from env", env: "gpu-1"},
		{name: "simulate needs no node", args: []string{"--simulate"}},
		{name: "no node", wantErr: "--node-name (or $NODE_NAME) is required without --simulate"},
		{name: "slots", args: []string{"--node-name=n", "--slots-per-gpu=0"}, wantErr: "--slots-per-gpu=0: want 1..64"},
		{name: "selector", args: []string{"--simulate", "--simulate-node-selector=a b"}, wantErr: "--simulate-node-selector"},
		{name: "rate", args: []string{"--simulate", "--simulate-restore-rate=0"}, wantErr: "--simulate-restore-rate must be positive"},
		{name: "image ttl within the dump timeout", args: []string{"--node-name=n", "--image-ttl=5m"}, wantErr: "--image-ttl=5m0s: want more than --dump-timeout=10m0s"},
		{name: "image ttl past the dump timeout", args: []string{"--node-name=n", "--image-ttl=20s", "--dump-timeout=10s"}},
		{name: "image gc interval", args: []string{"--node-name=n", "--image-gc-interval=0s"}, wantErr: "--image-gc-interval=0s: want a positive duration"},
		{name: "restore margin negative", args: []string{"--node-name=n", "--restore-margin=-1Mi"}, wantErr: "--restore-margin=-1Mi: want 0..16Gi"},
		{name: "restore margin huge", args: []string{"--node-name=n", "--restore-margin=17Gi"}, wantErr: "--restore-margin=17Gi: want 0..16Gi"},
		{name: "restore margin", args: []string{"--node-name=n", "--restore-margin=64Mi"}},
		{name: "quantities parse", args: []string{"--node-name=n", "--host-memory-reserve=16Gi", "--simulate-checkpoint-rate=1.5G"}},
		{name: "tiers", args: []string{"--simulate", "--parked-memory-high-water=60%", "--disk-tier-dir=/var/lib/kybernate/tiers",
			"--object-store-secret=kybernate-system/kybernate-object-store", "--disk-tier-idle=5m"}},
		{name: "tiers absolute", args: []string{"--simulate", "--parked-memory-high-water=200Gi", "--disk-tier-dir=/t"}},
		{name: "tiers bad mark", args: []string{"--simulate", "--parked-memory-high-water=150%"}, wantErr: "invalid argument"},
		{name: "tiers without disk dir", args: []string{"--simulate", "--parked-memory-high-water=60%"}, wantErr: "--disk-tier-dir"},
		{name: "tier policy on a real node", args: []string{"--node-name=n", "--parked-memory-high-water=60%", "--disk-tier-dir=/t", "--checkpoint-dir=/c",
			"--disk-tier-high-water=80%", "--object-store-secret=a/b"}},
		{name: "tier policy on a real node without checkpoint dir", args: []string{"--node-name=n", "--parked-memory-high-water=60%", "--disk-tier-dir=/t"},
			wantErr: "--disk-tier-dir on a real node needs --checkpoint-dir"},
		{name: "tier policy on a real node, hold too long", args: []string{"--node-name=n", "--parked-memory-high-water=60%", "--disk-tier-dir=/t", "--checkpoint-dir=/c",
			"--spilled-create-hold=2m"}, wantErr: "--spilled-create-hold=2m0s"},
		{name: "tier policy on a real node, recreate timeout", args: []string{"--node-name=n", "--parked-memory-high-water=60%", "--disk-tier-dir=/t", "--checkpoint-dir=/c",
			"--spilled-recreate-timeout=0s"}, wantErr: "--spilled-recreate-timeout=0s"},
		{name: "container tiers on a real node", args: []string{"--node-name=n", "--disk-tier-dir=/t", "--checkpoint-dir=/c", "--object-store-secret=a/b"}},
		{name: "container tiers sweep", args: []string{"--node-name=n", "--disk-tier-dir=/t", "--checkpoint-dir=/c", "--tier-orphan-grace=0s"},
			wantErr: "--tier-orphan-grace=0s"},
		{name: "container tiers without checkpoint dir", args: []string{"--node-name=n", "--disk-tier-dir=/t"}, wantErr: "needs --checkpoint-dir"},
		{name: "container tiers relative", args: []string{"--node-name=n", "--disk-tier-dir=t", "--checkpoint-dir=/c"}, wantErr: "--disk-tier-dir=\"t\": want an absolute folder"},
		{name: "container tiers without containerd", args: []string{"--node-name=n", "--disk-tier-dir=/t", "--checkpoint-dir=/c", "--containerd-socket="},
			wantErr: "--containerd-socket is required"},
		{name: "container tiers with the disk mark", args: []string{"--node-name=n", "--disk-tier-dir=/t", "--checkpoint-dir=/c", "--disk-tier-high-water=80%"},
			wantErr: "--disk-tier-high-water needs --parked-memory-high-water"},
		{name: "object store without tiers", args: []string{"--simulate", "--object-store-secret=a/b"}, wantErr: "need --parked-memory-high-water"},
		{name: "object store secret name", args: []string{"--simulate", "--parked-memory-high-water=1Gi", "--disk-tier-dir=/t", "--object-store-secret=b"},
			wantErr: "--object-store-secret=\"b\": want namespace/name"},
		{name: "disk mark", args: []string{"--simulate", "--parked-memory-high-water=1Gi", "--disk-tier-dir=/t", "--disk-tier-high-water=80%"}},
		{name: "disk mark bad", args: []string{"--simulate", "--parked-memory-high-water=1Gi", "--disk-tier-dir=/t", "--disk-tier-high-water=0%"}, wantErr: "invalid argument"},
		{name: "disk mark without tiers", args: []string{"--simulate", "--disk-tier-high-water=500Gi"}, wantErr: "need --parked-memory-high-water"},
		{name: "orphan grace", args: []string{"--simulate", "--parked-memory-high-water=1Gi", "--disk-tier-dir=/t", "--tier-orphan-grace=0s"}, wantErr: "--tier-orphan-grace"},
		{name: "thp window", args: []string{"--node-name=n", "--thp-window", "--thp-window-defrag=defer+madvise"}},
		{name: "thp defrag without window", args: []string{"--node-name=n", "--thp-window-defrag=defer"}, wantErr: "--thp-window-defrag needs --thp-window"},
		{name: "thp defrag two words", args: []string{"--node-name=n", "--thp-window", "--thp-window-defrag=defer madvise"}, wantErr: "want one word"},
		{name: "thp window without state dir", args: []string{"--node-name=n", "--thp-window", "--state-dir="}, wantErr: "--thp-window: the thp folder and the state folder are required"},
		{name: "tier backoff", args: []string{"--simulate", "--parked-memory-high-water=1Gi", "--disk-tier-dir=/t", "--tier-max-backoff=1s"},
			wantErr: "--tier-max-backoff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NODE_NAME", tt.env)
			o := NewOptions()
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			o.AddFlags(fs)
			err := fs.Parse(tt.args)
			if err == nil {
				err = o.Validate()
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Validate error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestOptionsDefaults(t *testing.T) {
	o := NewOptions()
	if o.SlotsPerGPU != 2 || o.Socket != "/run/kybernate/agent.sock" || o.HostMemoryReserve.String() != "8Gi" ||
		o.SimulateCheckpointRate.Value() != 2_200_000_000 || o.SimulateRestoreRate.Value() != 6_000_000_000 ||
		o.ImageTTL != 24*time.Hour || o.ImageGCInterval != time.Minute ||
		o.RestoreMargin.String() != "256Mi" || o.engineConfig().RestoreMargin != 256<<20 {
		t.Errorf("defaults %+v", o)
	}
}
