package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/test/integration/framework"
)

const (
	// modelServerImage is test/modelserver on Debian's python3 (hack/images.sh).
	modelServerImage = "kybernate/modelserver-cpu:dev"
	// heldRequests arrive, concurrently, while the model server sleeps.
	heldRequests = 50
)

// Scale to zero on the real node: the CPU model server of test/modelserver runs as a real
// process under our shim, behind the kybernate-activator binary; idle, it is put to sleep;
// heldRequests requests that arrive while it sleeps are held, and after the wake each is
// answered exactly once by the same process (its pid and the token it drew at start), which
// counts what it answered.
func TestScaleToZeroCPU(t *testing.T) {
	c := framework.Get(t)
	node := c.RealNode(t)
	if !t.Run("install", func(t *testing.T) { testInstall(t, c, node) }) {
		return
	}
	c.Script(t, "hack/images.sh", "--import", "modelserver-cpu")
	// The agent freezes a pod without GPUs through the node's containerd.
	useNodeContainerd(t, c)
	ctx := t.Context()
	ns := c.CreateNamespace(t)
	h := c.Record(t, ns)
	proxy, metrics := framework.FreeAddress(t), framework.FreeAddress(t)
	c.Start(t, "kybernate-activator", "--kubeconfig", c.Kubeconfig, "--bind-address", proxy, "--metrics-bind-address", metrics,
		"--interval", "200ms", "--hold-timeout", "90s", "--wake-timeout", "60s", "--retry-after", "3s", "--v=4")
	framework.WaitHTTPOK(t, "http://"+metrics+"/readyz", time.Minute)

	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "llm", Namespace: ns, Annotations: map[string]string{
			kv1.AnnotationBackendSelector: "app=llm", kv1.AnnotationBackendPort: "8000",
		}},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "kybernate-activator.kybernate-system.svc.cluster.local"},
	}
	if _, err := c.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := modelServerPod(ns, "llm", node)
	if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ready := framework.WaitForPod(ctx, t, c.Client, ns, pod.Name, 2*time.Minute, "Running and Ready", func(p *v1.Pod) bool {
		return p.Status.Phase == v1.PodRunning && framework.PodReady(p)
	})
	if shim := shimOf(t, ready); shim != shimBinary {
		t.Errorf("the model server is a child of %q, want %s", shim, shimBinary)
	}
	host := "llm." + ns
	first := complete(t, proxy, host, "first")
	if !first.ok() {
		t.Fatalf("first request: %s", first)
	}
	proc := podProcess(t, ready)
	t.Logf("model server pid %d (%d on the host), token %s", first.PID, proc, first.Token)

	// Idle: the activator puts it to sleep.
	start := time.Now()
	asleep := h.WaitPod(t, pod.Name, 2*time.Minute, "put to sleep (Suspended)", func(p *v1.Pod) bool {
		return gpupod.StateOf(p) == kv1.PodSuspended
	})
	t.Logf("asleep %s after the first answer (state %s)", time.Since(start).Round(100*time.Millisecond), gpupod.StateOf(asleep))
	// Asleep is frozen: the process is in a frozen cgroup.
	if !frozen(t, proc) {
		t.Errorf("the model server (pid %d) sleeps, but its cgroup is not frozen", proc)
	}

	// While it sleeps, heldRequests requests at once; each is held, then answered once.
	answers := make([]answer, heldRequests)
	var wg sync.WaitGroup
	sent := time.Now()
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = complete(t, proxy, host, fmt.Sprintf("held-%d", i))
		}()
	}
	wg.Wait()
	t.Logf("%d held requests answered within %s of being sent", heldRequests, time.Since(sent).Round(100*time.Millisecond))
	for i, a := range answers {
		switch {
		case !a.ok():
			t.Errorf("held request %d: %s", i, a)
		case a.PID != first.PID || a.Token != first.Token:
			t.Errorf("held request %d answered by pid %d token %s, want the process that slept: pid %d token %s (%s)", i, a.PID, a.Token, first.PID, first.Token, a)
		}
	}

	// The server's own count: the first request and each held one, once; nothing else.
	awake := framework.WaitForPod(ctx, t, c.Client, ns, pod.Name, time.Minute, "awake", func(p *v1.Pod) bool {
		return gpupod.StateOf(p) == kv1.PodRunning && framework.PodReady(p)
	})
	st := serverStats(t, awake.Status.PodIP)
	if st.PID != first.PID || st.Token != first.Token {
		t.Errorf("after the wake the server is pid %d token %s, want pid %d token %s (a restart, not a wake)", st.PID, st.Token, first.PID, first.Token)
	}
	if st.Completions != heldRequests+1 {
		t.Errorf("the server answered %d completions, want %d (the first and %d held)", st.Completions, heldRequests+1, heldRequests)
	}
	for i := range heldRequests {
		if n := st.IDs[fmt.Sprintf("held-%d", i)]; n != 1 {
			t.Errorf("held request %d answered %d times by the server, want once", i, n)
		}
	}
	if p := podProcess(t, awake); p != proc {
		t.Errorf("after the wake the pod's process is pid %d on the host, want %d", p, proc)
	}
	if frozen(t, proc) {
		t.Errorf("the model server (pid %d) is awake, but its cgroup is still frozen", proc)
	}
	checkSleepAndWake(t, c, h, ns, pod.Name, sent)
	for _, cs := range awake.Status.ContainerStatuses {
		if cs.RestartCount != 0 {
			t.Errorf("container %s restarted %d times", cs.Name, cs.RestartCount)
		}
	}
	if states := h.StatesOf(pod.Name); !containsInOrder(states, kv1.PodSuspended, kv1.PodRunning) {
		t.Errorf("the pod's states %v, want it Suspended, then Running", states)
	}
}

// checkSleepAndWake checks what the sleep and the wake left: the agent froze the pod for a
// Suspend of reason Idle, a Resume asked for after the held requests were sent thawed it, and
// the activator reported the wake with the requests it held.
func checkSleepAndWake(t *testing.T, c *framework.Cluster, h *framework.History, ns, pod string, sent time.Time) {
	t.Helper()
	var sleep, resume *kv1.GPUCheckpoint
	// The agent writes the pod's state before the GPUCheckpoint's final status: the pod may be
	// Running again while the Resume is still InProgress. Wait until both have ended.
	h.Wait(t, 30*time.Second, "the Idle suspension and the Resume of "+pod+" ended", func() bool {
		sleep, resume = nil, nil
		for _, ck := range h.LatestCheckpoints() {
			switch {
			case ck.Spec.PodName != pod:
			case ck.Spec.Action == kv1.ActionSuspend && ck.Spec.Reason == kv1.ReasonIdle:
				sleep = ck
			case ck.Spec.Action == kv1.ActionResume:
				resume = ck
			}
		}
		return sleep != nil && resume != nil && ended(sleep) && ended(resume)
	})
	switch {
	case sleep == nil:
		t.Errorf("no Suspend of reason Idle of %s", pod)
	case sleep.Status.Phase != kv1.PhaseSucceeded || !strings.Contains(sleep.Status.Message, "Freeze "):
		t.Errorf("sleep %s: %s (%s), want Succeeded, the containers frozen", sleep.Name, sleep.Status.Phase, sleep.Status.Message)
	default:
		t.Logf("sleep %s: %s", sleep.Name, sleep.Status.Message)
	}
	switch {
	case resume == nil:
		t.Errorf("no Resume of %s", pod)
	case resume.Status.Phase != kv1.PhaseSucceeded || !strings.Contains(resume.Status.Message, "Thaw "):
		t.Errorf("wake %s: %s (%s), want Succeeded, the containers thawed", resume.Name, resume.Status.Phase, resume.Status.Message)
	case resume.CreationTimestamp.Time.Before(sent.Truncate(time.Second)):
		t.Errorf("wake %s asked for at %s, before the held requests were sent (%s)", resume.Name, resume.CreationTimestamp, sent)
	default:
		t.Logf("wake %s: %s", resume.Name, resume.Status.Message)
	}
	framework.WaitFor(t.Context(), t, 30*time.Second, "the Woken event of "+pod, func(ctx context.Context) (bool, error) {
		evs, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod + ",reason=Woken"})
		if err != nil || len(evs.Items) == 0 {
			return false, err
		}
		t.Logf("Woken: %s", evs.Items[0].Message)
		return true, nil
	})
}

func ended(ck *kv1.GPUCheckpoint) bool {
	return ck.Status.Phase == kv1.PhaseSucceeded || ck.Status.Phase == kv1.PhaseFailed
}

// podProcess is the host pid of the pod's container process (not its pause process).
func podProcess(t *testing.T, pod *v1.Pod) int {
	t.Helper()
	procs, err := filepath.Glob("/proc/[0-9]*/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, cg := range procs {
		data, err := os.ReadFile(cg)
		if err != nil || !strings.Contains(string(data), "pod"+string(pod.UID)) {
			continue
		}
		pid := filepath.Base(filepath.Dir(cg))
		if comm, _ := os.ReadFile("/proc/" + pid + "/comm"); strings.TrimSpace(string(comm)) == "pause" {
			continue
		}
		n, err := strconv.Atoi(pid)
		if err == nil {
			return n
		}
	}
	t.Fatalf("no process of pod %s/%s on this host", pod.Namespace, pod.Name)
	return 0
}

// frozen reports whether pid's cgroup is frozen: cgroup v1's freezer.state FROZEN, or v2's
// cgroup.events "frozen 1".
func frozen(t *testing.T, pid int) bool {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[1] == "freezer":
			state, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/freezer", parts[2], "freezer.state"))
			if err != nil {
				t.Fatal(err)
			}
			return strings.TrimSpace(string(state)) == "FROZEN"
		case parts[0] == "0" && parts[1] == "":
			events, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", parts[2], "cgroup.events"))
			if err != nil {
				t.Fatal(err)
			}
			return strings.Contains(string(events), "frozen 1")
		}
	}
	t.Fatalf("pid %d: no freezer cgroup in %q", pid, data)
	return false
}

// modelServerPod is a pod of kybernate-scheduler on node running the CPU model server with
// 16 MiB of weights, ready once loaded; it sleeps after 3 s without a request.
func modelServerPod(ns, name, node string) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "llm"},
			Annotations: map[string]string{kv1.AnnotationIdleAfter: "3s"}},
		Spec: v1.PodSpec{
			SchedulerName:                 schedulerName,
			RuntimeClassName:              ptr.To(runtimeClass),
			NodeSelector:                  map[string]string{v1.LabelHostname: node},
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []v1.Container{{
				Name:            "server",
				Image:           modelServerImage,
				ImagePullPolicy: v1.PullNever,
				Args:            []string{"--gib", "0.015625", "--weights", "/tmp/weights.bin", "--device", "cpu", "--port", "8000"},
				Ports:           []v1.ContainerPort{{Name: "http", ContainerPort: 8000}},
				ReadinessProbe: &v1.Probe{
					ProbeHandler:  v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: "/health", Port: intstr.FromInt32(8000)}},
					PeriodSeconds: 1,
				},
			}},
		},
	}
}

// answer is a completion's HTTP status and raw body, an error that ended it (sending it or
// reading its body), and the process that answered as the body names it.
type answer struct {
	status int
	body   string
	err    error
	PID    int    `json:"pid"`
	Token  string `json:"token"`
}

// String is the whole answer, raw body included, so that a bad one is explained by the log.
func (a answer) String() string {
	s := fmt.Sprintf("status %d, body %q", a.status, a.body)
	if a.err != nil {
		s += ", error: " + a.err.Error()
	}
	return s
}

// ok reports whether a is a completion named by a process: 200, read whole, a JSON object
// with a pid and a token.
func (a answer) ok() bool {
	return a.status == http.StatusOK && a.err == nil && a.PID != 0 && a.Token != ""
}

// complete posts a completion with id to the activator for host. The answer keeps what came
// back as it came, whatever it is.
func complete(t *testing.T, proxy, host, id string) answer {
	body, _ := json.Marshal(map[string]any{"prompt": "hi", "max_tokens": 4, "id": id})
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+proxy+"/v1/completions", bytes.NewReader(body))
	if err != nil {
		return answer{err: err}
	}
	req.Host = host
	resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, body: string(raw)}
	if err != nil {
		a.err = fmt.Errorf("reading the body (Content-Length %d, %d bytes read): %w", resp.ContentLength, len(raw), err)
		return a
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(raw, &a); err != nil {
			a.err = fmt.Errorf("decoding the body: %w", err)
		}
	}
	return a
}

// stats is the model server's GET /stats.
type stats struct {
	PID         int            `json:"pid"`
	Token       string         `json:"token"`
	Completions int            `json:"completions"`
	IDs         map[string]int `json:"ids"`
}

// serverStats asks the model server itself, at its pod IP, what it has answered.
func serverStats(t *testing.T, podIP string) stats {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + net.JoinHostPort(podIP, "8000") + "/stats")
	if err != nil {
		t.Fatalf("model server stats: %v", err)
	}
	defer resp.Body.Close()
	var st stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("model server stats: %v", err)
	}
	return st
}

// containsInOrder reports whether states holds want, in this order (not necessarily adjacent).
func containsInOrder(states []kv1.PodGPUState, want ...kv1.PodGPUState) bool {
	i := 0
	for _, s := range states {
		if i < len(want) && s == want[i] {
			i++
		}
	}
	return i == len(want)
}
