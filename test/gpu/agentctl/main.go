// Command agentctl is a small client of the node agent's gRPC API (apis/agent/v1) for the GPU
// machine tests (test/gpu/run-agent.sh): it calls GetInventory, Suspend, Resume or Checkpoint on the
// agent's unix socket and prints one JSON object on stdout with the response and the call's
// wall time.
//
//	agentctl [--socket PATH] [--timeout D] inventory
//	agentctl [--socket PATH] [--timeout D] [--lock-timeout D] suspend NAMESPACE/NAME [UID]
//	agentctl [--socket PATH] [--timeout D] [--to GPU,...] resume NAMESPACE/NAME [UID]
//	agentctl [--socket PATH] [--timeout D] [--leave-running] checkpoint NAMESPACE/NAME[/CONTAINER] IMAGE_DIR
//
//	agentctl [--containerd SOCK] [--namespace NS] ctr-run|ctr-ps|ctr-rm ...   (containerd.go)
//
// Errors print {"error": ..., "code": ...} and exit 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
)

func main() {
	os.Exit(run())
}

func run() int {
	fs := pflag.NewFlagSet("agentctl", pflag.ContinueOnError)
	socket := fs.String("socket", "/run/kybernate/agent.sock", "The agent's unix socket.")
	timeout := fs.Duration("timeout", 5*time.Minute, "Limit of the call.")
	lockTimeout := fs.Duration("lock-timeout", 0, "Suspend: the lock timeout sent to the agent (0: the agent's default).")
	to := fs.StringSlice("to", nil, "Resume: the GPUs (UUIDs) to resume onto, one per GPU of the pod.")
	leaveRunning := fs.Bool("leave-running", false, "Checkpoint: keep the container running after the dump.")
	containerd := fs.String("containerd", "/run/containerd/containerd.sock", "ctr-*: containerd's socket.")
	namespace := fs.String("namespace", "k8s.io", "ctr-*: containerd namespace.")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	args := fs.Args()
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: agentctl [flags] inventory | suspend NS/NAME [UID] | resume NS/NAME [UID] | checkpoint NS/NAME[/CONTAINER] DIR")
		return 2
	}

	if strings.HasPrefix(args[0], "ctr-") {
		if len(args) < 2 {
			return fail(fmt.Errorf("%s needs arguments", args[0]))
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		start := time.Now()
		resp, err := ctrCommand(ctx, *containerd, *namespace, args)
		if err != nil {
			return fail(err)
		}
		return emit(args[0], time.Since(start), resp)
	}

	conn, err := grpc.NewClient("unix://"+*socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	client := agentv1.NewNodeAgentServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	start := time.Now()
	var resp proto.Message
	switch args[0] {
	case "inventory":
		resp, err = client.GetInventory(ctx, &agentv1.GetInventoryRequest{})
	case "suspend", "resume":
		if len(args) < 2 {
			return fail(fmt.Errorf("%s needs NAMESPACE/NAME", args[0]))
		}
		ref, perr := podRef(args[1:])
		if perr != nil {
			return fail(perr)
		}
		if args[0] == "suspend" {
			req := &agentv1.SuspendRequest{Pod: ref}
			if *lockTimeout > 0 {
				req.LockTimeout = durationpb.New(*lockTimeout)
			}
			resp, err = client.Suspend(ctx, req)
		} else {
			resp, err = client.Resume(ctx, &agentv1.ResumeRequest{Pod: ref, TargetGpus: *to})
		}
	case "checkpoint":
		if len(args) != 3 {
			return fail(fmt.Errorf("checkpoint needs NAMESPACE/NAME[/CONTAINER] IMAGE_DIR"))
		}
		parts := strings.Split(args[1], "/")
		if len(parts) < 2 || len(parts) > 3 {
			return fail(fmt.Errorf("pod %q: want NAMESPACE/NAME[/CONTAINER]", args[1]))
		}
		ref := &agentv1.PodRef{Namespace: parts[0], Name: parts[1]}
		if len(parts) == 3 {
			ref.Container = parts[2]
		}
		resp, err = client.Checkpoint(ctx, &agentv1.CheckpointRequest{Pod: ref, ImageDir: args[2], LeaveRunning: *leaveRunning})
	default:
		return fail(fmt.Errorf("unknown command %q", args[0]))
	}
	if err != nil {
		return fail(err)
	}
	return emit(args[0], time.Since(start), resp)
}

func emit(command string, wall time.Duration, resp proto.Message) int {
	body, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(resp)
	if err != nil {
		return fail(err)
	}
	out, err := json.Marshal(map[string]any{"command": command, "wall_s": wall.Seconds(), "response": json.RawMessage(body)})
	if err != nil {
		return fail(err)
	}
	fmt.Println(string(out))
	return 0
}

func podRef(args []string) (*agentv1.PodRef, error) {
	ns, name, ok := strings.Cut(args[0], "/")
	if !ok || ns == "" || name == "" {
		return nil, fmt.Errorf("pod %q: want NAMESPACE/NAME", args[0])
	}
	ref := &agentv1.PodRef{Namespace: ns, Name: name}
	if len(args) > 1 {
		ref.Uid = args[1]
	}
	return ref, nil
}

func fail(err error) int {
	o := map[string]any{"error": err.Error()}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		o["code"] = se.GRPCStatus().Code().String()
		o["message"] = se.GRPCStatus().Message()
	}
	b, _ := json.Marshal(o)
	fmt.Println(string(b))
	return 1
}
