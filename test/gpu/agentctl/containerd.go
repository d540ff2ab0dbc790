package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// specTypeURL is how containerd stores an OCI runtime spec in a container record.
const specTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

// ctrCommand runs the containerd commands the GPU container suite needs, through containerd's
// API services (what ctr does, in a fraction of its size: the suite carries its binaries):
//
//	ctr-run SPEC ID RUNTIME LOGFILE [LABEL=VALUE...]   create the container from an OCI spec
//	                                                  (its root an absolute path, no
//	                                                  snapshot) and start its task
//	ctr-ps ID                                         the task's PIDs
//	ctr-rm ID                                         kill the task, delete it and the container
func ctrCommand(ctx context.Context, address, namespace string, args []string) (proto.Message, error) {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, "containerd-namespace", namespace)
	containers, tasks := containersapi.NewContainersClient(conn), tasksapi.NewTasksClient(conn)
	switch args[0] {
	case "ctr-run":
		if len(args) < 5 {
			return nil, fmt.Errorf("ctr-run needs SPEC ID RUNTIME LOGFILE [LABEL=VALUE...]")
		}
		spec, err := os.ReadFile(args[1])
		if err != nil {
			return nil, err
		}
		id, runtime, logFile := args[2], args[3], args[4]
		labels := map[string]string{}
		for _, l := range args[5:] {
			k, v, _ := strings.Cut(l, "=")
			labels[k] = v
		}
		if _, err := containers.Create(ctx, &containersapi.CreateContainerRequest{Container: &containersapi.Container{
			ID: id, Labels: labels, Runtime: &containersapi.Container_Runtime{Name: runtime},
			Spec: &anypb.Any{TypeUrl: specTypeURL, Value: spec},
		}}); err != nil {
			return nil, fmt.Errorf("creating container: %w", err)
		}
		if _, err := tasks.Create(ctx, &tasksapi.CreateTaskRequest{ContainerID: id, Stdout: "file://" + logFile, Stderr: "file://" + logFile}); err != nil {
			return nil, fmt.Errorf("creating task: %w", err)
		}
		resp, err := tasks.Start(ctx, &tasksapi.StartRequest{ContainerID: id})
		if err != nil {
			return nil, fmt.Errorf("starting task: %w", err)
		}
		return resp, nil
	case "ctr-ps":
		resp, err := tasks.ListPids(ctx, &tasksapi.ListPidsRequest{ContainerID: args[1]})
		if err != nil {
			return nil, err
		}
		pids := make([]any, 0, len(resp.GetProcesses()))
		for _, p := range resp.GetProcesses() {
			pids = append(pids, float64(p.GetPid()))
		}
		l, err := structpb.NewList(pids)
		if err != nil {
			return nil, err
		}
		return l, nil
	case "ctr-rm":
		id := args[1]
		var errs []string
		if _, err := tasks.Kill(ctx, &tasksapi.KillRequest{ContainerID: id, Signal: uint32(syscall.SIGKILL), All: true}); err != nil {
			errs = append(errs, "kill: "+err.Error())
		}
		if _, err := tasks.Wait(ctx, &tasksapi.WaitRequest{ContainerID: id}); err != nil {
			errs = append(errs, "wait: "+err.Error())
		}
		if _, err := tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: id}); err != nil {
			errs = append(errs, "delete task: "+err.Error())
		}
		if _, err := containers.Delete(ctx, &containersapi.DeleteContainerRequest{ID: id}); err != nil {
			errs = append(errs, "delete container: "+err.Error())
		}
		if len(errs) > 0 {
			return nil, fmt.Errorf("%s", strings.Join(errs, "; "))
		}
		return &structpb.Struct{}, nil
	}
	return nil, fmt.Errorf("unknown command %q", args[0])
}
