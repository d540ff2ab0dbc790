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
)

// algorithmMetric is kube-scheduler's histogram of the scheduling algorithm (PreFilter to
// Score, without binding), served by both schedulers on /metrics.
const algorithmMetric = "scheduler_scheduling_algorithm_duration_seconds"

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

func newEndpoint(port int) endpoint {
	return endpoint{
		url: fmt.Sprintf("https://127.0.0.1:%d", port),
		// The scheduler serves a self-signed certificate on 127.0.0.1.
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

// waitReady waits for the scheduler's /healthz.
func (e endpoint) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		body, err := e.get(ctx, "/healthz")
		if err == nil {
			body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("scheduler at %s not healthy after %s: %w", e.url, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// scrape reads one histogram (without labels) from /metrics.
func (e endpoint) scrape(ctx context.Context, name string) (histogram, error) {
	body, err := e.get(ctx, "/metrics")
	if err != nil {
		return histogram{}, err
	}
	defer body.Close()
	var h histogram
	prefix := name + `_bucket{le="`
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		le, rest, ok := strings.Cut(line[len(prefix):], `"} `)
		if !ok {
			return histogram{}, fmt.Errorf("unexpected metrics line %q", line)
		}
		bound, err1 := strconv.ParseFloat(le, 64)
		count, err2 := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		if err1 != nil || err2 != nil {
			return histogram{}, fmt.Errorf("unexpected metrics line %q", line)
		}
		h.bounds, h.counts = append(h.bounds, bound), append(h.counts, count)
	}
	if err := sc.Err(); err != nil {
		return histogram{}, err
	}
	if len(h.bounds) == 0 {
		return histogram{}, fmt.Errorf("%s has no %s", e.url, name)
	}
	return h, nil
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

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
