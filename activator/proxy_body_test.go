package activator

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// lateEOF is a transport whose forwarding of a request body reads the body's Content-Length
// bytes at once, but the read after them (where the transport sees EOF) only once gate is
// closed: what a busy CPU does to the goroutine that writes the request to the pod. Its
// connections to the pod report their Close on closed.
type lateEOF struct {
	tr     *http.Transport
	gate   chan struct{}
	eof    chan error // what the read after the body's end returned
	closed chan struct{}
	once   sync.Once
}

func newLateEOF(t *testing.T) *lateEOF {
	l := &lateEOF{gate: make(chan struct{}), eof: make(chan error, 1), closed: make(chan struct{})}
	l.tr = &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &reportingConn{Conn: c, l: l}, nil
	}}
	t.Cleanup(l.tr.CloseIdleConnections)
	return l
}

func (l *lateEOF) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Body = &lateEOFBody{ReadCloser: r.Body, left: r.ContentLength, l: l}
	return l.tr.RoundTrip(r)
}

type lateEOFBody struct {
	io.ReadCloser
	left int64
	l    *lateEOF
}

func (b *lateEOFBody) Read(p []byte) (int, error) {
	if b.left > 0 {
		n, err := b.ReadCloser.Read(p[:min(int64(len(p)), b.left)])
		b.left -= int64(n)
		return n, err
	}
	<-b.l.gate
	n, err := b.ReadCloser.Read(p)
	select {
	case b.l.eof <- err:
	default:
	}
	return n, err
}

type reportingConn struct {
	net.Conn
	l *lateEOF
}

func (c *reportingConn) Close() error {
	c.l.once.Do(func() { close(c.l.closed) })
	return c.Conn.Close()
}

// The pod answers a request with a body before the transport that forwarded it has read the
// body's end: the client still gets the whole answer. (The HTTP/1 server closes the request
// body when the response header goes out, unless the handler is full duplex; the transport's
// late read then fails, it closes the pod's connection and the answer breaks off after its
// 200 header: golang/go#40747.)
func TestAnswerWholeWhenThePodAnswersBeforeTheBodyEnds(t *testing.T) {
	const want = `{"text": "a b c d", "pid": 1, "token": "0123456789abcdef"}`
	finish := make(chan struct{})
	pod := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// The header first, the body once the test has let the transport read on.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-finish:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, want)
	}))
	defer pod.Close()
	u, _ := url.Parse(pod.URL)
	b := NewBackend("ml/llm", Limits{MaxHeld: 1, HoldTimeout: time.Minute}, func() {}, time.Now)
	b.SetReady(u.Host)
	tr := newLateEOF(t)
	proxy := httptest.NewServer(NewProxy(oneRoute{b}, tr, time.Second))
	defer proxy.Close()

	resp, err := proxy.Client().Post(proxy.URL+"/v1/completions", "application/json", strings.NewReader(`{"prompt": "hi", "id": "a"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The client has the answer's header: the transport reads the end of the body now.
	close(tr.gate)
	if err := <-tr.eof; !errors.Is(err, io.EOF) {
		t.Errorf("the transport's read at the end of the request body: %v, want EOF", err)
		// It closes the pod's connection; the pod sends the rest only then, to show the effect.
		<-tr.closed
	}
	close(finish)
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || err != nil || string(body) != want {
		t.Errorf("answer: %d %q, error %v; want 200 %q", resp.StatusCode, body, err, want)
	}
}
