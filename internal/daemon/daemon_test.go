package daemon

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestClientsNamesTheKubeconfig(t *testing.T) {
	c := DefaultClient()
	c.Kubeconfig = "/nonexistent/kubeconfig"
	if _, _, err := c.Clients("test"); err == nil || !strings.Contains(err.Error(), "loading kubeconfig") {
		t.Fatalf("Clients with a missing kubeconfig: %v", err)
	}
}

func TestServersServeAndShutDown(t *testing.T) {
	ctx := context.Background()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	var s Servers
	if err := s.Serve(ctx, taken.Addr().String(), "metrics", http.NotFoundHandler(), nil); err == nil || !strings.Contains(err.Error(), "for metrics") {
		t.Fatalf("Serve on a taken address: %v", err)
	}

	// A free address: take one and give it back for the server.
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := free.Addr().String()
	free.Close()
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	if err := s.Serve(ctx, addr, "health", ok, nil); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ok" {
		t.Fatalf("served %q", body)
	}
	s.Shutdown(ctx, time.Second)
	if _, err := http.Get("http://" + addr); err == nil {
		t.Fatal("the server still answers after Shutdown")
	}
}
