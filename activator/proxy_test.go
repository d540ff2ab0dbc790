package activator

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/metrics/testutil"
)

func init() { RegisterMetrics() }

// oneRoute routes every host to one backend.
type oneRoute struct{ b *Backend }

func (r oneRoute) Route(string) (*Backend, error) { return r.b, nil }

// recorder is a transport that records the X-Seq of each request it is handed, in order.
type recorder struct {
	mu   sync.Mutex
	seqs []int
	next http.RoundTripper
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	n, _ := strconv.Atoi(req.Header.Get("X-Seq"))
	r.mu.Lock()
	r.seqs = append(r.seqs, n)
	r.mu.Unlock()
	return r.next.RoundTrip(req)
}

func (r *recorder) order() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seqs)
}

// env is a proxy in front of a backend server that answers each request with its X-Seq and
// counts how often it saw each.
type env struct {
	proxy   *httptest.Server
	backend *Backend
	target  string
	rec     *recorder
	wakes   chan struct{}

	mu   sync.Mutex
	seen map[int]int
}

func newEnv(t *testing.T, limits Limits) *env {
	t.Helper()
	e := &env{seen: map[int]int{}, wakes: make(chan struct{}, 10000)}
	pod := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.Header.Get("X-Seq"))
		e.mu.Lock()
		e.seen[n]++
		e.mu.Unlock()
		fmt.Fprintf(w, "answer %d", n)
	}))
	t.Cleanup(pod.Close)
	u, _ := url.Parse(pod.URL)
	e.target = u.Host
	e.backend = NewBackend("ml/llm", limits, func() {
		select {
		case e.wakes <- struct{}{}:
		default:
		}
	}, time.Now)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 100
	t.Cleanup(tr.CloseIdleConnections)
	e.rec = &recorder{next: tr}
	e.proxy = httptest.NewServer(NewProxy(oneRoute{e.backend}, e.rec, 7*time.Second))
	t.Cleanup(e.proxy.Close)
	return e
}

type answer struct {
	seq    int
	status int
	body   string
	header http.Header
	err    error
}

func (e *env) get(ctx context.Context, seq int) answer {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.proxy.URL+"/v1/completions", nil)
	req.Header.Set("X-Seq", strconv.Itoa(seq))
	resp, err := e.proxy.Client().Do(req)
	if err != nil {
		return answer{seq: seq, err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{seq: seq, status: resp.StatusCode, body: string(b), header: resp.Header, err: err}
}

// holdN sends n requests one after the other, each once the previous one is held, and
// returns the channel their answers come on.
func (e *env) holdN(t *testing.T, n int) chan answer {
	t.Helper()
	answers := make(chan answer, n)
	for i := range n {
		go func() { answers <- e.get(t.Context(), i) }()
		waitFor(t, fmt.Sprintf("%d held requests", i+1), func() bool { return e.backend.State().Held == i+1 })
	}
	return answers
}

// waitFor polls cond; the test's deadline bounds it.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-t.Context().Done():
			t.Fatalf("gave up waiting for %s", what)
		case <-time.After(time.Millisecond):
		}
	}
}

func TestHeldRequestsAnsweredInOrderOnce(t *testing.T) {
	e := newEnv(t, Limits{MaxHeld: 50, HoldTimeout: time.Minute})
	const n = 50
	answers := e.holdN(t, n)
	if len(e.wakes) == 0 {
		t.Fatal("requests are held but no wake was asked for")
	}
	if got := e.rec.order(); len(got) != 0 {
		t.Fatalf("requests reached the pod while it slept: %v", got)
	}
	before := wakeCount(t)
	w, woke := e.backend.SetReady(e.target)
	if !woke || w.Held != n {
		t.Errorf("SetReady = %+v, %v; want a wake with %d held", w, woke, n)
	}
	for range n {
		a := <-answers
		if a.err != nil || a.status != http.StatusOK || a.body != fmt.Sprintf("answer %d", a.seq) {
			t.Errorf("request %d: %d %q %v", a.seq, a.status, a.body, a.err)
		}
	}
	if diff := slices.Compare(e.rec.order(), seq(n)); diff != 0 {
		t.Errorf("forwarded in order %v, want %v", e.rec.order(), seq(n))
	}
	for i := range n {
		if e.seen[i] != 1 {
			t.Errorf("the pod saw request %d %d times", i, e.seen[i])
		}
	}
	// The handlers release their leases just after the answers went out.
	waitFor(t, "no request in flight", func() bool { return !e.backend.State().Busy })
	if got := e.backend.State(); got.Held != 0 || !got.Ready {
		t.Errorf("after the wake: %+v", got)
	}
	if after := wakeCount(t); after != before+1 {
		t.Errorf("wake histogram samples %d -> %d, want one more", before, after)
	}
	// Awake: a request goes straight through.
	if a := e.get(t.Context(), 99); a.status != http.StatusOK || e.seen[99] != 1 {
		t.Errorf("request to the awake pod: %+v", a)
	}
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

func TestFullQueueAnswers503(t *testing.T) {
	e := newEnv(t, Limits{MaxHeld: 2, HoldTimeout: time.Minute})
	held := e.holdN(t, 2)
	before, _ := testutil.GetCounterMetricValue(rejectedRequests.WithLabelValues(CauseQueueFull))
	a := e.get(t.Context(), 2)
	if a.status != http.StatusServiceUnavailable || a.header.Get("Retry-After") != "7" || !strings.Contains(a.body, "already holds 2 requests") {
		t.Errorf("request past a full queue: %d, Retry-After %q, %q", a.status, a.header.Get("Retry-After"), a.body)
	}
	if after, _ := testutil.GetCounterMetricValue(rejectedRequests.WithLabelValues(CauseQueueFull)); after != before+1 {
		t.Errorf("rejected queue_full %v -> %v", before, after)
	}
	e.backend.SetReady(e.target)
	for range 2 {
		if a := <-held; a.status != http.StatusOK {
			t.Errorf("held request %d: %d %q", a.seq, a.status, a.body)
		}
	}
	if e.seen[2] != 0 {
		t.Error("the rejected request reached the pod")
	}
}

func TestHoldTimeoutAnswers503(t *testing.T) {
	e := newEnv(t, Limits{MaxHeld: 10, HoldTimeout: 50 * time.Millisecond})
	a := e.get(t.Context(), 0)
	if a.status != http.StatusServiceUnavailable || a.header.Get("Retry-After") != "7" || !strings.Contains(a.body, "did not become ready within 50ms") {
		t.Errorf("request held past its timeout: %d, Retry-After %q, %q", a.status, a.header.Get("Retry-After"), a.body)
	}
	if st := e.backend.State(); st.Held != 0 {
		t.Errorf("the timed-out request is still held: %+v", st)
	}
	e.backend.SetReady(e.target)
	if len(e.seen) != 0 {
		t.Errorf("a timed-out request reached the pod: %v", e.seen)
	}
}

func TestWakeFailureAnswersHeldWithReason(t *testing.T) {
	e := newEnv(t, Limits{MaxHeld: 10, HoldTimeout: time.Minute})
	held := e.holdN(t, 3)
	before, _ := testutil.GetCounterMetricValue(wakes.WithLabelValues(WakeFailed))
	if n := e.backend.Fail(WakeFailed, "the resume failed: CUDA_ERROR_UNKNOWN"); n != 3 {
		t.Errorf("Fail answered %d requests, want 3", n)
	}
	for range 3 {
		a := <-held
		if a.status != http.StatusServiceUnavailable || a.header.Get("Retry-After") == "" ||
			!strings.Contains(a.body, "ml/llm could not be woken: the resume failed: CUDA_ERROR_UNKNOWN") {
			t.Errorf("held request %d after a failed wake: %d %q", a.seq, a.status, a.body)
		}
	}
	if after, _ := testutil.GetCounterMetricValue(wakes.WithLabelValues(WakeFailed)); after != before+1 {
		t.Errorf("wakes failed %v -> %v", before, after)
	}
}

// A streamed response reaches the client event by event: the pod sends the second event only
// after the client has read the first.
func TestStreamedResponsesFlushed(t *testing.T) {
	read := make(chan struct{})
	pod := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-read:
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "data: second\n\n")
	}))
	defer pod.Close()
	u, _ := url.Parse(pod.URL)
	b := NewBackend("ml/llm", Limits{MaxHeld: 1, HoldTimeout: time.Minute}, func() {}, time.Now)
	b.SetReady(u.Host)
	proxy := httptest.NewServer(NewProxy(oneRoute{b}, http.DefaultTransport, time.Second))
	defer proxy.Close()

	resp, err := proxy.Client().Get(proxy.URL + "/v1/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewReader(resp.Body)
	if l, err := lines.ReadString('\n'); err != nil || l != "data: first\n" {
		t.Fatalf("first event: %q, %v", l, err)
	}
	close(read)
	rest, err := io.ReadAll(lines)
	if err != nil || string(rest) != "\ndata: second\n\n" {
		t.Errorf("rest of the stream: %q, %v", rest, err)
	}
}

func TestIdleness(t *testing.T) {
	now := time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	b := NewBackend("ml/llm", Limits{MaxHeld: 1, HoldTimeout: time.Minute}, func() {}, clock)
	now = now.Add(time.Hour)
	b.SetReady("pod:80")
	if st := b.State(); st.IdleFor != 0 {
		t.Errorf("a pod that just became ready has been idle for %s", st.IdleFor)
	}
	now = now.Add(time.Minute)
	if st := b.State(); st.IdleFor != time.Minute || st.Busy {
		t.Errorf("after a minute without requests: %+v", st)
	}
	l, err := b.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(10 * time.Minute)
	if st := b.State(); !st.Busy {
		t.Errorf("a request in flight for 10 min is not activity: %+v", st)
	}
	l.Release()
	if st := b.State(); st.IdleFor != 0 || st.Busy {
		t.Errorf("right after a request: %+v", st)
	}
}

// wakeCount is the number of samples of the wake latency histogram.
func wakeCount(t *testing.T) uint64 {
	t.Helper()
	vec, err := testutil.GetHistogramVecFromGatherer(legacyregistry.DefaultGatherer, "kybernate_activator_wake_duration_seconds", nil)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, h := range vec {
		n += h.GetSampleCount()
	}
	return n
}
