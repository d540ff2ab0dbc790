// Command agentctl is a small client of the node agent's gRPC API (apis/agent/v1) for the GPU
// machine tests (test/gpu/run-agent.sh): it calls GetInventory, Suspend or Resume on the
// agent's unix socket and prints one JSON object on stdout with the response and the call's
// wall time.
//
//	agentctl [--socket PATH] [--timeout D] inventory
//	agentctl [--socket PATH] [--timeout D] [--lock-timeout D] suspend NAMESPACE/NAME [UID]
//	agentctl [--socket PATH] [--timeout D] resume NAMESPACE/NAME [UID]
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
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	args := fs.Args()
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: agentctl [flags] inventory | suspend NS/NAME [UID] | resume NS/NAME [UID]")
		return 2
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
			resp, err = client.Resume(ctx, &agentv1.ResumeRequest{Pod: ref})
		}
	default:
		return fail(fmt.Errorf("unknown command %q", args[0]))
	}
	wall := time.Since(start)
	if err != nil {
		return fail(err)
	}
	body, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(resp)
	if err != nil {
		return fail(err)
	}
	out, err := json.Marshal(map[string]any{"command": args[0], "wall_s": wall.Seconds(), "response": json.RawMessage(body)})
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
