package app

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/kybernate/kybernate/activator"
)

type oneRoute struct{ b *activator.Backend }

func (r oneRoute) Route(string) (*activator.Backend, error) { return r.b, nil }

// The proxy speaks HTTP/2 without TLS to clients that know it does, and HTTP/1.1 to the rest.
func TestProxyServesHTTP2AndHTTP1(t *testing.T) {
	activator.RegisterMetrics()
	pod := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "pod got %s", r.URL.Path)
	}))
	defer pod.Close()
	u, _ := url.Parse(pod.URL)
	b := activator.NewBackend("ml/llm", activator.Limits{MaxHeld: 1, HoldTimeout: time.Minute}, func() {}, time.Now)
	b.SetReady(u.Host)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: activator.NewProxy(oneRoute{b}, http.DefaultTransport, time.Second), Protocols: ProxyProtocols()}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	h2 := &http.Transport{Protocols: new(http.Protocols), TLSClientConfig: &tls.Config{}}
	h2.Protocols.SetUnencryptedHTTP2(true)
	defer h2.CloseIdleConnections()
	for name, tr := range map[string]*http.Transport{"HTTP/2.0": h2, "HTTP/1.1": {}} {
		resp, err := (&http.Client{Transport: tr}).Get("http://" + ln.Addr().String() + "/v1/models")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.Proto != name || string(body) != "pod got /v1/models" {
			t.Errorf("%s request: answered over %s with %q", name, resp.Proto, body)
		}
	}
}

func TestValidate(t *testing.T) {
	if err := NewOptions().Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	o := NewOptions()
	o.MaxHeld, o.HoldTimeout, o.SimulateBackendAddress = 0, -time.Second, "nowhere"
	err := o.Validate()
	for _, want := range []string{"--max-held-requests", "--hold-timeout", "--simulate-backend-address"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v; want it to name %s", err, want)
		}
	}
}
