package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
)

// series names a histogram of kube-scheduler's /metrics: its name and the labels it must have.
type series struct {
	name   string
	labels []string // `key="value"` pairs
}

// algorithm is kube-scheduler's histogram of the scheduling algorithm (PreFilter to Score,
// extenders' filter and prioritize included, without binding); attempt is the whole scheduling
// attempt of the pods that were scheduled (algorithm and binding cycle), per profile.
func algorithm() series { return series{name: "scheduler_scheduling_algorithm_duration_seconds"} }

func attempt(profile string) series {
	return series{name: "scheduler_scheduling_attempt_duration_seconds",
		labels: []string{`profile="` + profile + `"`, `result="scheduled"`}}
}

// histogram is one scrape of a Prometheus histogram: cumulative counts by upper bound.
type histogram struct {
	bounds []float64 // ascending, +Inf last
	counts []float64
}

// endpoint is a scheduler's secure port, served without authentication for /metrics and
// /debug/pprof (always-allowed paths of the bench's scheduler processes).
type endpoint struct {
	url    string
	client *http.Client
}

func newEndpoint(url string) endpoint {
	return endpoint{
		url: url,
		// A scheduler serves a self-signed certificate on 127.0.0.1.
		client: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}, //nolint:gosec
	}
}

func (e endpoint) get(ctx context.Context, path string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.url+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s%s: %s", e.url, path, resp.Status)
	}
	return resp.Body, nil
}

// waitReady waits for /readyz: a scheduler's informers synced and its handlers registered, the
// extender's informers synced.
func (e endpoint) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		body, err := e.get(ctx, "/readyz")
		if err == nil {
			body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %w", e.url, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// scrape reads histograms from /metrics.
func (e endpoint) scrape(ctx context.Context, want ...series) ([]histogram, error) {
	body, err := e.get(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	defer body.Close()
	hs := make([]histogram, len(want))
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for i, w := range want {
			bound, count, ok, err := bucket(line, w)
			if err != nil {
				return nil, err
			}
			if ok {
				hs[i].bounds, hs[i].counts = append(hs[i].bounds, bound), append(hs[i].counts, count)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for i, w := range want {
		if len(hs[i].bounds) == 0 && len(w.labels) == 0 {
			return nil, fmt.Errorf("%s has no %s", e.url, w.name)
		}
	}
	return hs, nil
}

// bucket parses a line of /metrics that is a bucket of the series.
func bucket(line string, w series) (bound, count float64, ok bool, err error) {
	rest, found := strings.CutPrefix(line, w.name+"_bucket{")
	if !found {
		return 0, 0, false, nil
	}
	labels, value, found := strings.Cut(rest, "} ")
	if !found {
		return 0, 0, false, fmt.Errorf("unexpected metrics line %q", line)
	}
	pairs := strings.Split(labels, ",")
	for _, l := range w.labels {
		if !slices.Contains(pairs, l) {
			return 0, 0, false, nil
		}
	}
	for _, p := range pairs {
		if le, found := strings.CutPrefix(p, `le="`); found {
			bound, err1 := strconv.ParseFloat(strings.TrimSuffix(le, `"`), 64)
			count, err2 := strconv.ParseFloat(strings.Fields(value)[0], 64)
			if err1 != nil || err2 != nil {
				return 0, 0, false, fmt.Errorf("unexpected metrics line %q", line)
			}
			return bound, count, true, nil
		}
	}
	return 0, 0, false, fmt.Errorf("metrics line without le: %q", line)
}

// since is the histogram of the observations made after earlier.
func (h histogram) since(earlier histogram) histogram {
	d := histogram{bounds: h.bounds, counts: slices.Clone(h.counts)}
	if len(earlier.counts) == len(h.counts) {
		for i := range d.counts {
			d.counts[i] -= earlier.counts[i]
		}
	}
	return d
}

// quantile estimates the q-quantile as Prometheus' histogram_quantile does: linear
// interpolation inside the bucket that holds it. Buckets double in width, so the estimate
// lies within a factor of two of the truth.
func (h histogram) quantile(q float64) time.Duration {
	n := len(h.counts)
	if n == 0 || h.counts[n-1] == 0 {
		return 0
	}
	rank := q * h.counts[n-1]
	i := slices.IndexFunc(h.counts, func(c float64) bool { return c >= rank })
	if math.IsInf(h.bounds[i], 1) {
		return seconds(h.bounds[max(i-1, 0)])
	}
	lower, below := 0.0, 0.0
	if i > 0 {
		lower, below = h.bounds[i-1], h.counts[i-1]
	}
	inBucket := h.counts[i] - below
	if inBucket <= 0 {
		return seconds(h.bounds[i])
	}
	return seconds(lower + (h.bounds[i]-lower)*(rank-below)/inBucket)
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// profileCPU writes a CPU profile of the scheduler over d into path.
func (e endpoint) profileCPU(ctx context.Context, d time.Duration, path string) error {
	body, err := e.get(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(d.Seconds())))
	if err != nil {
		return err
	}
	defer body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// profileAPIServer writes a CPU profile of kube-apiserver over d into path (its /debug/pprof,
// through the admin client): the scheduler under test shares the machine's cores with it.
func profileAPIServer(ctx context.Context, client kubernetes.Interface, d time.Duration, path string) error {
	body, err := client.CoreV1().RESTClient().Get().AbsPath("/debug/pprof/profile").
		Param("seconds", fmt.Sprint(int(d.Seconds()))).DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	return os.WriteFile(path, body, 0o644)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
