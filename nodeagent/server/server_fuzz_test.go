package server

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
)

// fuzzRequests are valid requests of each method, the seeds of FuzzRequests (method index,
// wire bytes).
var fuzzRequests = []proto.Message{
	&agentv1.SuspendRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: "train"}, LockTimeout: durationpb.New(time.Second)},
	&agentv1.ResumeRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: "train", Uid: "uid-train"}, TargetGpus: []string{devs[1].UUID.String()}},
	&agentv1.CheckpointRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: "train", Container: "main"}, ImageDir: "/var/lib/kybernate/images/x"},
	&agentv1.RestoreRequest{ImageDir: "/nonexistent/image", ContainerId: "c1", TargetGpus: []string{"GPU-x"}},
	&agentv1.GetInventoryRequest{},
}

// Requests arrive from any process that may open the agent's socket: whatever their bytes,
// the server answers with a gRPC status that has a code of its own (never Unknown), and never
// panics.
func FuzzRequests(f *testing.F) {
	for i, req := range fuzzRequests {
		data, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), data)
	}
	f.Fuzz(func(t *testing.T, method uint8, data []byte) {
		s, _ := newServer(t)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		var err error
		switch int(method) % len(fuzzRequests) {
		case 0:
			req := &agentv1.SuspendRequest{}
			if proto.Unmarshal(data, req) != nil {
				return
			}
			_, err = s.Suspend(ctx, req)
		case 1:
			req := &agentv1.ResumeRequest{}
			if proto.Unmarshal(data, req) != nil {
				return
			}
			_, err = s.Resume(ctx, req)
		case 2:
			req := &agentv1.CheckpointRequest{}
			if proto.Unmarshal(data, req) != nil {
				return
			}
			_, err = s.Checkpoint(ctx, req)
		case 3:
			req := &agentv1.RestoreRequest{}
			if proto.Unmarshal(data, req) != nil {
				return
			}
			_, err = s.Restore(ctx, req)
		case 4:
			req := &agentv1.GetInventoryRequest{}
			if proto.Unmarshal(data, req) != nil {
				return
			}
			_, err = s.GetInventory(ctx, req)
		}
		if err == nil {
			return
		}
		st, ok := status.FromError(err)
		if !ok || st.Code() == codes.Unknown || st.Code() == codes.OK {
			t.Errorf("method %d: error %v is not a gRPC status with a code", int(method)%len(fuzzRequests), err)
		}
	})
}
