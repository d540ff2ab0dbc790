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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NODE_NAME", tt.env)
			o := NewOptions()
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			o.AddFlags(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			err := o.Validate()
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
