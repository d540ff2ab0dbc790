package activator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"strconv"
	"time"

	"k8s.io/klog/v2"
)

// Router finds the Backend of a request's Host.
type Router interface {
	// Route returns the backend for host (as the request carries it, port included), or an
	// error that says why there is none.
	Route(host string) (*Backend, error)
}

// Proxy is the activator's HTTP handler: it forwards each request to a ready pod of its
// Service, holding it while none is, and streams responses through as they come (server-sent
// events, chunked token streams).
type Proxy struct {
	router     Router
	retryAfter time.Duration
	rp         *httputil.ReverseProxy
}

type leaseKey struct{}

// NewProxy returns a Proxy that forwards through transport; answers 503 carry Retry-After
// retryAfter (whole seconds, at least one).
func NewProxy(router Router, transport http.RoundTripper, retryAfter time.Duration) *Proxy {
	p := &Proxy{router: router, retryAfter: retryAfter}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			l := pr.In.Context().Value(leaseKey{}).(*Lease)
			pr.SetURL(&url.URL{Scheme: "http", Host: l.Target})
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		// Negative: flush after every write, so tokens reach the client as the pod sends them.
		FlushInterval: -1,
		Transport:     dispatching{transport},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			l := r.Context().Value(leaseKey{}).(*Lease)
			klog.FromContext(r.Context()).V(2).Info("Forwarding failed", "host", r.Host, "target", l.Target, "err", err)
			if errors.Is(err, context.Canceled) {
				return // the client is gone
			}
			http.Error(w, fmt.Sprintf("forwarding to %s failed: %v", l.Target, err), http.StatusBadGateway)
		},
	}
	return p
}

// dispatching marks a held request's lease dispatched once the request has been written to
// the pod, so the next held request follows it and the pod receives them in arrival order.
// A request that fails before it is written is dispatched when its handler returns.
type dispatching struct{ next http.RoundTripper }

func (d dispatching) RoundTrip(r *http.Request) (*http.Response, error) {
	if l, ok := r.Context().Value(leaseKey{}).(*Lease); ok && l.h != nil {
		r = r.WithContext(httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{
			WroteRequest: func(httptrace.WroteRequestInfo) { l.Dispatched() },
		}))
	}
	return d.next.RoundTrip(r)
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, err := p.router.Route(r.Host)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	lease, err := b.Acquire(r.Context())
	if err != nil {
		var he *HoldError
		if !errors.As(err, &he) || he.Cause == CauseCanceled {
			return // the client is gone
		}
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int(p.retryAfter.Round(time.Second)/time.Second))))
		http.Error(w, he.Message, http.StatusServiceUnavailable)
		return
	}
	defer lease.Release()
	fullDuplex(w)
	p.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), leaseKey{}, lease)))
}

// fullDuplex keeps an HTTP/1 request's body open while the response is written, as HTTP/2
// always does. By default the HTTP/1 server drains and closes what is left of the body when
// the response header goes out; but the transport that forwards the body to the pod reads it
// once more after its Content-Length bytes (to see EOF), and that read can come after the pod
// has answered (a fast pod, a busy CPU). It then fails on the closed body, the transport closes
// the pod's connection as a failed write, and the response being copied to the client breaks
// off after its 200 header: the client reads a truncated body (golang/go#40747).
func fullDuplex(w http.ResponseWriter) {
	// HTTP/2 answers ErrNotSupported: it is full duplex already.
	_ = http.NewResponseController(w).EnableFullDuplex()
}
