package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Servers are a daemon's HTTP servers (metrics and health, a proxy): started one by one,
// shut down together.
type Servers struct {
	wg      sync.WaitGroup
	servers []*http.Server
}

// Serve listens on addr and serves h there in the background; what names the server in logs
// and errors. protocols may be nil (HTTP/1.1 and, with TLS, HTTP/2).
func (s *Servers) Serve(ctx context.Context, addr, what string, h http.Handler, protocols *http.Protocols) error {
	logger := klog.FromContext(ctx)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s for %s: %w", addr, what, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, Protocols: protocols}
	s.servers = append(s.servers, srv)
	logger.Info("Serving "+what, "address", ln.Addr().String())
	s.wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error(err, "HTTP server failed", "server", what)
		}
	})
	return nil
}

// Shutdown stops every server, letting requests in flight finish for up to grace.
func (s *Servers) Shutdown(ctx context.Context, grace time.Duration) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	for _, srv := range s.servers {
		_ = srv.Shutdown(ctx)
	}
	s.wg.Wait()
}
