package server

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
	"github.com/kybernate/kybernate/nodeagent/storage"
	"github.com/kybernate/kybernate/nodeagent/tier"
)

type oneKey struct{ key storage.Key }

func (k oneKey) Key(context.Context, string) (storage.Key, error) { return k.key, nil }

// The storage tier RPCs: a node without tiers has no spilled images (the shim goes on) and
// refuses Spill; bad requests get their own codes.
func TestSpilledRPCs(t *testing.T) {
	s, _ := newServer(t)
	ctx := t.Context()
	pod := &agentv1.PodRef{Namespace: "ml", Name: "train", Uid: "uid-train", Container: "main"}
	resp, err := s.FetchSpilled(ctx, &agentv1.FetchSpilledRequest{Pod: pod, ContainerId: "c1"})
	if err != nil || resp.GetImageDir() != "" {
		t.Errorf("FetchSpilled without tiers: %v, %v; want no image", resp, err)
	}
	if _, err := s.Spill(ctx, &agentv1.SpillRequest{Pod: pod, Tier: "Disk"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Spill without tiers: %v, want FailedPrecondition", err)
	}

	dir := t.TempDir()
	disk, err := storage.NewDisk(filepath.Join(dir, "tiers", "images"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := storage.ParseKey([]byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	n := s.nodes.(NodeMap)["node-a"]
	n.Tiers = &tier.Containers{Disk: disk, Keys: oneKey{key}, DiskDir: filepath.Join(dir, "tiers"), ImageRoot: filepath.Join(dir, "images"), Timeout: time.Minute}
	s.nodes.(NodeMap)["node-a"] = n

	tests := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{name: "fetch without a container", want: codes.InvalidArgument, call: func() error {
			_, err := s.FetchSpilled(ctx, &agentv1.FetchSpilledRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: "train", Uid: "u"}})
			return err
		}},
		{name: "fetch with a path in the name", want: codes.InvalidArgument, call: func() error {
			_, err := s.FetchSpilled(ctx, &agentv1.FetchSpilledRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: "a/../../b", Uid: "u", Container: "c"}})
			return err
		}},
		{name: "fetch of a pod with no image", want: codes.OK, call: func() error {
			resp, err := s.FetchSpilled(ctx, &agentv1.FetchSpilledRequest{Pod: pod})
			if err == nil && resp.GetImageDir() != "" {
				t.Errorf("image %s of a pod that has none", resp.GetImageDir())
			}
			return err
		}},
		{name: "spill to an unknown tier", want: codes.InvalidArgument, call: func() error {
			_, err := s.Spill(ctx, &agentv1.SpillRequest{Pod: pod, Tier: "Tape"})
			return err
		}},
		{name: "spill to the object store without one", want: codes.FailedPrecondition, call: func() error {
			_, err := s.Spill(ctx, &agentv1.SpillRequest{Pod: pod, Tier: "ObjectStore"})
			return err
		}},
		{name: "release of another folder", want: codes.InvalidArgument, call: func() error {
			_, err := s.ReleaseSpilled(ctx, &agentv1.ReleaseSpilledRequest{Pod: pod, ImageDir: "/etc", Restored: true})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); status.Code(err) != tt.want {
				t.Errorf("error %v, want code %s", err, tt.want)
			}
		})
	}
}

// A create of a spilled pod's container refused until the pod's Resume is retryable.
func TestTierStatusNotResumed(t *testing.T) {
	err := tierStatus(&tier.ContainerError{Cause: tier.ContainerNotYet, Err: errors.New("pod ml/train is Suspended with its memory spilled to Disk")})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "spilled to Disk") {
		t.Errorf("%v, want Unavailable with the reason", err)
	}
}
