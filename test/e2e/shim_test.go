package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/images"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	"github.com/google/go-cmp/cmp"

	"github.com/kybernate/kybernate/test/ci"
)

const (
	counterImage  = "docker.io/kybernate/counter:e2e"
	runtimeShim   = "io.containerd.kybernate.v1"
	runtimeRuncV2 = "io.containerd.runc.v2"
)

// env is one test's containerd client in a namespace of its own: runc keeps its state under
// /run/containerd/runc/<namespace> for every daemon on the machine.
type env struct {
	t      testing.TB
	client *containerd.Client
	ctx    context.Context
	ns     string
	image  containerd.Image
}

func newEnv(t testing.TB) *env {
	t.Helper()
	return newEnvOn(t, socket)
}

// newEnvOn is newEnv on the containerd daemon listening on sock.
func newEnvOn(t testing.TB, sock string) *env {
	t.Helper()
	if skipReason != "" {
		ci.Skip(t, skipReason)
	}
	client, err := containerd.New(sock, containerd.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	ns := "kyb-e2e-" + hex.EncodeToString(suffix)
	ctx := namespaces.WithNamespace(t.Context(), ns)
	f, err := os.Open(imageTar)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	imgs, err := client.Import(ctx, f)
	if err != nil {
		t.Fatalf("importing %s: %v", imageTar, err)
	}
	if len(imgs) != 1 {
		t.Fatalf("imported %d images, want 1", len(imgs))
	}
	img := containerd.NewImage(client, imgs[0])
	if err := img.Unpack(ctx, ""); err != nil {
		t.Fatalf("unpacking: %v", err)
	}
	e := &env{t: t, client: client, ctx: ctx, ns: ns, image: img}
	t.Cleanup(e.cleanup)
	return e
}

// cleanup removes every container, task and image of the namespace, then the namespace.
func (e *env) cleanup() {
	ctx := namespaces.WithNamespace(context.Background(), e.ns)
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ctrs, _ := e.client.Containers(ctx)
	for _, c := range ctrs {
		if task, err := c.Task(ctx, nil); err == nil {
			_, _ = task.Delete(ctx, containerd.WithProcessKill)
		}
		_ = c.Delete(ctx, containerd.WithSnapshotCleanup)
	}
	imgs, _ := e.client.ImageService().List(ctx)
	for _, i := range imgs {
		_ = e.client.ImageService().Delete(ctx, i.Name, images.SynchronousDelete())
	}
	if err := e.client.NamespaceService().Delete(ctx, e.ns); err != nil {
		e.t.Logf("deleting namespace %s: %v", e.ns, err)
	}
}

// output is a container's stdout or stderr, safe to read while the container writes.
type output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// lines are the complete lines written so far.
func (o *output) lines() []string {
	s := o.String()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return strings.Split(s[:i], "\n")
	}
	return nil
}

// ctr is a container with a running (or created) task.
type ctr struct {
	c              containerd.Container
	task           containerd.Task
	stdout, stderr *output
	exit           <-chan containerd.ExitStatus
}

type ctrOpts struct {
	runtime     string
	args        []string
	env         []string
	labels      map[string]string
	annotations map[string]string
	// noStart leaves the task created.
	noStart bool
}

// run creates a container from the counter image and its task, and starts it.
func (e *env) run(id string, o ctrOpts) (*ctr, error) {
	e.t.Helper()
	if o.runtime == "" {
		o.runtime = runtimeShim
	}
	specOpts := []oci.SpecOpts{oci.WithImageConfig(e.image)}
	if len(o.args) > 0 {
		specOpts = append(specOpts, oci.WithProcessArgs(o.args...))
	}
	if len(o.env) > 0 {
		specOpts = append(specOpts, oci.WithEnv(o.env))
	}
	if len(o.annotations) > 0 {
		specOpts = append(specOpts, oci.WithAnnotations(o.annotations))
	}
	c, err := e.client.NewContainer(e.ctx, id,
		containerd.WithImage(e.image),
		containerd.WithNewSnapshot(id+"-rootfs", e.image),
		containerd.WithRuntime(o.runtime, nil),
		containerd.WithContainerLabels(o.labels),
		containerd.WithNewSpec(specOpts...),
	)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	out := &ctr{c: c, stdout: &output{}, stderr: &output{}}
	task, err := c.NewTask(e.ctx, cio.NewCreator(cio.WithStreams(nil, out.stdout, out.stderr)))
	if err != nil {
		return out, fmt.Errorf("task of %s: %w", id, err)
	}
	out.task = task
	if out.exit, err = task.Wait(e.ctx); err != nil {
		return out, err
	}
	if o.noStart {
		return out, nil
	}
	if err := task.Start(e.ctx); err != nil {
		return out, fmt.Errorf("starting %s: %w", id, err)
	}
	return out, nil
}

// mustRun is run that fails the test on error.
func (e *env) mustRun(id string, o ctrOpts) *ctr {
	e.t.Helper()
	c, err := e.run(id, o)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// waitExit waits for the task's exit status.
func (c *ctr) waitExit(t testing.TB) uint32 {
	t.Helper()
	select {
	case st := <-c.exit:
		code, _, err := st.Result()
		if err != nil {
			t.Fatal(err)
		}
		return code
	case <-time.After(30 * time.Second):
		t.Fatalf("container %s did not exit within 30s", c.c.ID())
	}
	return 0
}

// eventually polls cond every 50ms for up to d.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// count is the counter's last complete number, 0 before the first.
func (c *ctr) count(t testing.TB) int {
	t.Helper()
	lines := c.stdout.lines()
	if len(lines) == 0 {
		return 0
	}
	n, err := strconv.Atoi(lines[len(lines)-1])
	if err != nil {
		t.Fatalf("counter printed %q: %v", lines[len(lines)-1], err)
	}
	return n
}

// counting waits until the counter has passed n.
func (c *ctr) counting(t testing.TB, n int) {
	t.Helper()
	eventually(t, 20*time.Second, fmt.Sprintf("container %s to count past %d (stdout %q, stderr %q)", c.c.ID(), n, c.stdout.String(), c.stderr.String()),
		func() bool { return c.count(t) > n })
}

// resumedAt checks that a restored counter goes on where the original stopped, at last: it
// counts past last+3 and its first line is last+1 (a new start would begin at 1).
func (c *ctr) resumedAt(t testing.TB, last int) {
	t.Helper()
	c.counting(t, last+3)
	first, err := strconv.Atoi(c.stdout.lines()[0])
	if err != nil {
		t.Fatal(err)
	}
	if first != last+1 {
		t.Errorf("restored counter %s started at %d, want %d (the original stopped at %d)", c.c.ID(), first, last+1, last)
	}
}

// observed is what a runtime did with the passthrough scenarios.
type observed struct {
	ExitCode             uint32
	Stdout, Stderr       string
	TermExit, KillExit   uint32
	ExecExit             uint32
	ExecStdout, ExecErr  string
	StatusAfterStart     string
	StatusAfterKillCheck string
}

// passthrough runs the same scenarios under a runtime.
func passthrough(t *testing.T, e *env, runtime string) observed {
	var o observed
	id := strings.ReplaceAll(runtime, ".", "-")

	// Exit code and both streams.
	c := e.mustRun(id+"-exit", ctrOpts{runtime: runtime, args: []string{"sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"}})
	o.ExitCode = c.waitExit(t)
	// The streams are copied apart from the exit: wait for the copies to reach EOF.
	c.task.IO().Wait()
	o.Stdout, o.Stderr = c.stdout.String(), c.stderr.String()

	// A signal the process handles, then one it cannot.
	c = e.mustRun(id+"-term", ctrOpts{runtime: runtime, args: []string{"sh", "-c", `trap "echo got-term; exit 42" TERM; echo ready; while :; do sleep 0.05; done`}})
	eventually(t, 10*time.Second, "the trap to be set", func() bool { return strings.Contains(c.stdout.String(), "ready") })
	st, err := c.task.Status(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	o.StatusAfterStart = string(st.Status)
	if err := c.task.Kill(e.ctx, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	o.TermExit = c.waitExit(t)
	c.task.IO().Wait()
	o.Stdout += c.stdout.String()

	c = e.mustRun(id+"-kill", ctrOpts{runtime: runtime, args: []string{"sleep", "1000"}})
	// exec: stdout, stderr and exit code of a second process in the container.
	execOut, execErr := &output{}, &output{}
	spec, err := c.c.Spec(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	pspec := *spec.Process
	pspec.Args = []string{"sh", "-c", "echo exec-out; echo exec-err >&2; exit 5"}
	p, err := c.task.Exec(e.ctx, "probe", &pspec, cio.NewCreator(cio.WithStreams(nil, execOut, execErr)))
	if err != nil {
		t.Fatal(err)
	}
	pexit, err := p.Wait(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(e.ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-pexit:
		o.ExecExit = s.ExitCode()
	case <-time.After(30 * time.Second):
		t.Fatal("exec did not exit")
	}
	p.IO().Wait() // before Delete, which cancels copies still under way
	if _, err := p.Delete(e.ctx); err != nil {
		t.Fatal(err)
	}
	o.ExecStdout, o.ExecErr = execOut.String(), execErr.String()
	if err := c.task.Kill(e.ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	o.KillExit = c.waitExit(t)
	st, err = c.task.Status(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	o.StatusAfterKillCheck = string(st.Status)
	return o
}

// A container without Kybernate annotations behaves under the shim exactly as under runc v2.
func TestPassthroughLikeRuncV2(t *testing.T) {
	e := newEnv(t)
	want := passthrough(t, e, runtimeRuncV2)
	got := passthrough(t, e, runtimeShim)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("shim vs runc v2 (-runc +shim):\n%s", diff)
	}
	// And runc v2 did what the scenarios say, so that the comparison means something.
	if want.ExitCode != 3 || want.TermExit != 42 || want.KillExit != 137 || want.ExecExit != 5 ||
		want.Stdout != "to-stdout\nready\ngot-term\n" || want.Stderr != "to-stderr\n" || want.ExecStdout != "exec-out\n" || want.ExecErr != "exec-err\n" {
		t.Errorf("runc v2 observed %+v", want)
	}
}
