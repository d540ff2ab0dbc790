package scaletozero

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/test/integration/framework"
)

// modelServer is a simulated model server: it stands for the process of every pod llm (kwok
// pods run none). For each request it records the GPU state its pod had, read from the API
// server as the request arrived: a real model server answers only while its GPU memory is on
// the GPU.
type modelServer struct {
	addr   string
	client kubernetes.Interface

	// latest is the recorded state of a namespace's pod llm, by namespace.
	latest sync.Map

	mu       sync.Mutex
	arrivals map[string][]arrival // by namespace
}

type arrival struct {
	seq   string
	state kv1.PodGPUState
}

func newModelServer(t *testing.T) *modelServer {
	t.Helper()
	m := &modelServer{client: framework.Get(t).Client, arrivals: map[string][]arrival{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m.addr = ln.Addr().String()
	srv := &http.Server{Handler: m}
	go func() { _ = srv.Serve(ln) }()
	return m
}

func (m *modelServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Host: llm.<namespace>.svc.cluster.local, as the client sent it.
	parts := strings.Split(r.Host, ".")
	if len(parts) < 2 {
		http.Error(w, "host names no namespace", http.StatusBadRequest)
		return
	}
	ns := parts[1]
	state := kv1.PodGPUState("unknown")
	// The test's recorded history says Running only once the API server did; anything else
	// may be the history lagging, so the API server has the last word.
	if latest, ok := m.latest.Load(ns); ok && latest.(func() kv1.PodGPUState)() == kv1.PodRunning {
		state = kv1.PodRunning
	} else if pod, err := m.client.CoreV1().Pods(ns).Get(context.Background(), "llm", metav1.GetOptions{}); err == nil {
		state = gpupod.StateOf(pod)
	}
	seq := r.Header.Get("X-Seq")
	m.mu.Lock()
	m.arrivals[ns] = append(m.arrivals[ns], arrival{seq: seq, state: state})
	m.mu.Unlock()
	fmt.Fprintf(w, "answer %s", seq)
}

func (m *modelServer) seen(ns string) []arrival {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]arrival(nil), m.arrivals[ns]...)
}
