package checkpoint

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kybernate/kybernate/nodeagent/image"
)

// Labels the kubelet sets, through the CRI, on every container of a pod.
const (
	labelPodNamespace  = "io.kubernetes.pod.namespace"
	labelPodName       = "io.kubernetes.pod.name"
	labelPodUID        = "io.kubernetes.pod.uid"
	labelContainerName = "io.kubernetes.container.name"
	// labelKind is the CRI plugin's: "sandbox" for a pod's pause container.
	labelKind = "io.cri-containerd.kind"
)

// Containerd is the Runtime on a containerd daemon, through its API services (not the full
// containerd client: that one links Go's plugin package, which binds every symbol at load time
// and so breaks NVML's lazily resolved ones in the agent).
type Containerd struct {
	conn       *grpc.ClientConn
	namespace  string
	containers containersapi.ContainersClient
	tasks      tasksapi.TasksClient
	content    contentapi.ContentClient
}

var _ Runtime = (*Containerd)(nil)

// NewContainerd returns the Runtime on the daemon at address (its unix socket), in namespace
// (k8s.io for the CRI plugin's containers). It connects on first use.
func NewContainerd(address, namespace string) (*Containerd, error) {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("containerd at %s: %w", address, err)
	}
	return &Containerd{
		conn: conn, namespace: namespace,
		containers: containersapi.NewContainersClient(conn),
		tasks:      tasksapi.NewTasksClient(conn),
		content:    contentapi.NewContentClient(conn),
	}, nil
}

// Close closes the connection.
func (c *Containerd) Close() error { return c.conn.Close() }

func (c *Containerd) ctx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, c.namespace)
}

// FindContainer finds a pod's container by the kubelet's labels.
func (c *Containerd) FindContainer(ctx context.Context, pod image.Pod, name string) (Container, error) {
	filter := fmt.Sprintf("labels.%q==%s,labels.%q==%s", labelPodNamespace, strconv.Quote(pod.Namespace), labelPodName, strconv.Quote(pod.Name))
	if name != "" {
		filter += fmt.Sprintf(",labels.%q==%s", labelContainerName, strconv.Quote(name))
	}
	resp, err := c.containers.List(c.ctx(ctx), &containersapi.ListContainersRequest{Filters: []string{filter}})
	if err != nil {
		return Container{}, fmt.Errorf("asking containerd for the containers of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	var found []*containersapi.Container
	for _, ctr := range resp.GetContainers() {
		l := ctr.GetLabels()
		if l[labelKind] == "sandbox" || (pod.UID != "" && l[labelPodUID] != pod.UID) {
			continue
		}
		found = append(found, ctr)
	}
	if len(found) > 1 {
		// The kubelet keeps a restarted container's last attempt, stopped (its logs): the
		// container is the one whose task lives, also when the caller names none (the pod's
		// only container).
		found = c.live(ctx, found)
	}
	switch {
	case len(found) == 0 && name != "":
		return Container{}, fmt.Errorf("pod %s/%s has no container %q in containerd namespace %s", pod.Namespace, pod.Name, name, c.namespace)
	case len(found) == 0:
		return Container{}, fmt.Errorf("pod %s/%s has no container in containerd namespace %s", pod.Namespace, pod.Name, c.namespace)
	case len(found) > 1:
		var names []string
		for _, f := range found {
			names = append(names, f.GetLabels()[labelContainerName]+" ("+f.GetID()+")")
		}
		slices.Sort(names)
		if name != "" {
			return Container{}, fmt.Errorf("pod %s/%s has %d containers named %q, attempts of a restarted container, and not one of them alone runs: %s", pod.Namespace, pod.Name, len(found), name, strings.Join(names, ", "))
		}
		return Container{}, fmt.Errorf("pod %s/%s has %d containers, name one: %s", pod.Namespace, pod.Name, len(found), strings.Join(names, ", "))
	}
	ctr := found[0]
	out := Container{
		ID: ctr.GetID(), Name: ctr.GetLabels()[labelContainerName], Image: ctr.GetImage(), Runtime: ctr.GetRuntime().GetName(),
		Pod: image.Pod{Namespace: pod.Namespace, Name: pod.Name, UID: ctr.GetLabels()[labelPodUID]},
	}
	if s := ctr.GetSpec(); s != nil {
		var spec struct {
			Annotations map[string]string `json:"annotations"`
		}
		if err := json.Unmarshal(s.GetValue(), &spec); err != nil {
			return Container{}, fmt.Errorf("container %s: reading its spec: %w", ctr.GetID(), err)
		}
		out.Annotations = spec.Annotations
	}
	return out, nil
}

// live are the containers whose task runs or is frozen; all of them when that is not one
// (the caller names them in its error).
func (c *Containerd) live(ctx context.Context, ctrs []*containersapi.Container) []*containersapi.Container {
	var out []*containersapi.Container
	for _, ctr := range ctrs {
		resp, err := c.tasks.Get(c.ctx(ctx), &tasksapi.GetRequest{ContainerID: ctr.GetID()})
		if err != nil {
			continue // no task: a past attempt
		}
		switch resp.GetProcess().GetStatus() {
		case tasktypes.Status_RUNNING, tasktypes.Status_PAUSED, tasktypes.Status_PAUSING:
			out = append(out, ctr)
		}
	}
	if len(out) != 1 {
		return ctrs
	}
	return out
}

// Pause freezes the task.
func (c *Containerd) Pause(ctx context.Context, id string) error {
	_, err := c.tasks.Pause(c.ctx(ctx), &tasksapi.PauseTaskRequest{ContainerID: id})
	return err
}

// Resume thaws the task.
func (c *Containerd) Resume(ctx context.Context, id string) error {
	_, err := c.tasks.Resume(c.ctx(ctx), &tasksapi.ResumeTaskRequest{ContainerID: id})
	return err
}

// Dump checkpoints the task into imageDir and leaves it running (frozen, when it was). The
// CRIU options are what a container of a pod needs: its established TCP connections, file
// locks and unix sockets to peers outside the container stay as they are. containerd stores
// a copy of the (then nearly empty) folder it passes to the shim in its content store; that
// copy is deleted again.
func (c *Containerd) Dump(ctx context.Context, id, imageDir, workDir string) error {
	opts, err := typeurl.MarshalAny(&options.CheckpointOptions{
		Exit:                false,
		OpenTcp:             true,
		ExternalUnixSockets: true,
		FileLocks:           true,
		ImagePath:           imageDir,
		WorkPath:            workDir,
	})
	if err != nil {
		return err
	}
	resp, err := c.tasks.Checkpoint(c.ctx(ctx), &tasksapi.CheckpointTaskRequest{
		ContainerID: id,
		Options:     &anypb.Any{TypeUrl: opts.GetTypeUrl(), Value: opts.GetValue()},
	})
	if err != nil {
		return err
	}
	for _, d := range resp.GetDescriptors() {
		_, err := c.content.Delete(c.ctx(ctx), &contentapi.DeleteContentRequest{Digest: d.GetDigest()})
		if err != nil && status.Code(err) != codes.NotFound {
			return fmt.Errorf("deleting containerd's copy %s of the checkpoint: %w", d.GetDigest(), err)
		}
	}
	return nil
}

// Stop kills the task (thawing it, so that a frozen task can die), waits for it and deletes it.
func (c *Containerd) Stop(ctx context.Context, id string) error {
	ctx = c.ctx(ctx)
	if _, err := c.tasks.Kill(ctx, &tasksapi.KillRequest{ContainerID: id, Signal: uint32(syscall.SIGKILL), All: true}); err != nil {
		return fmt.Errorf("killing: %w", err)
	}
	// runc thaws a frozen cgroup v1 task to deliver the signal (cgroup v2 kills frozen tasks);
	// thawing here is for anything else. It fails on a task that is gone already.
	_, _ = c.tasks.Resume(ctx, &tasksapi.ResumeTaskRequest{ContainerID: id})
	if _, err := c.tasks.Wait(ctx, &tasksapi.WaitRequest{ContainerID: id}); err != nil {
		return fmt.Errorf("waiting for it to exit: %w", err)
	}
	if _, err := c.tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: id}); err != nil && status.Code(err) != codes.NotFound {
		// Under the kubelet, containerd's CRI plugin deletes an exited task too, on its exit
		// event; racing it, this delete can fail with "ttrpc: closed" as the shim goes away.
		// The task being gone is all Stop needs.
		if _, gerr := c.tasks.Get(ctx, &tasksapi.GetRequest{ContainerID: id}); status.Code(gerr) != codes.NotFound {
			return fmt.Errorf("deleting its task: %w", err)
		}
	}
	return nil
}

// Pids lists the task's processes (host PIDs): what the runtime finds in the container's
// cgroup, and the task's init process with its descendants. The second matters after a CRIU
// restore on cgroup v2, where CRIU (manage-cgroups soft) may put the restored processes back
// into the cgroup they were dumped from instead of the new container's, and the runtime's
// list comes back empty.
func (c *Containerd) Pids(ctx context.Context, id string) ([]int, error) {
	resp, err := c.tasks.ListPids(c.ctx(ctx), &tasksapi.ListPidsRequest{ContainerID: id})
	if err != nil {
		return nil, err
	}
	var out []int
	for _, p := range resp.GetProcesses() {
		out = append(out, int(p.GetPid()))
	}
	task, err := c.tasks.Get(c.ctx(ctx), &tasksapi.GetRequest{ContainerID: id})
	if err != nil {
		return nil, err
	}
	for _, p := range processTree("/proc", int(task.GetProcess().GetPid())) {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// processTree is pid and its descendants, read from procRoot/PID/task/TID/children.
func processTree(procRoot string, pid int) []int {
	if pid <= 0 {
		return nil
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		tasks, _ := os.ReadDir(filepath.Join(procRoot, strconv.Itoa(out[i]), "task"))
		for _, t := range tasks {
			b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(out[i]), "task", t.Name(), "children"))
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil && !slices.Contains(out, c) {
					out = append(out, c)
				}
			}
		}
	}
	return out
}
