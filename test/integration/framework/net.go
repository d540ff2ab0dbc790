package framework

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"
)

// FreeAddress returns a 127.0.0.1:port that was free a moment ago, for a component the test
// starts to listen on.
func FreeAddress(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// WaitHTTPOK waits until a GET of url answers 200 (a component's /readyz, a server's page);
// refused connections and other answers are waited out.
func WaitHTTPOK(t testing.TB, url string, timeout time.Duration) {
	t.Helper()
	WaitFor(t.Context(), t, timeout, url+" answering 200", func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}
