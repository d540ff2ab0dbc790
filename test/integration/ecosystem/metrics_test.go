package ecosystem

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cli"
	"github.com/kybernate/kybernate/test/integration/framework"
)

// Every metric a query of the Grafana dashboard names is served by the running scheduler or
// agent, after a preemption by suspension and a resume; the suspend and resume histograms
// recorded them; docs/metrics.md lists exactly the kybernate_* metrics the binaries serve.
func TestDashboardAndDocsNameServedMetrics(t *testing.T) {
	e := setup(t)
	suspendAndResume(t, e)

	served := map[string]*dto.MetricFamily{}
	for _, url := range []string{e.agentMetrics, e.schedulerMetrics} {
		for name, f := range scrape(t, e, url) {
			served[name] = f
		}
	}
	// A query names a histogram by its series.
	names := map[string]bool{}
	for name, f := range served {
		names[name] = true
		if f.GetType() == dto.MetricType_HISTOGRAM {
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		}
	}

	queries := dashboardQueries(t, e.c.Root)
	if len(queries) < 10 {
		t.Fatalf("dashboard has %d queries; the test reads it wrong", len(queries))
	}
	for _, q := range queries {
		metrics := metricName.FindAllString(variable.ReplaceAllString(q, ""), -1)
		if len(metrics) == 0 {
			t.Errorf("dashboard query names no metric this test knows (prefixes kybernate_, scheduler_): %s", q)
		}
		for _, m := range metrics {
			if !names[m] {
				t.Errorf("dashboard query names %s, which neither binary serves: %s", m, q)
			}
		}
	}

	for op, want := range map[string]int{"suspend": 1, "resume": 1} {
		for _, h := range []string{"kybernate_agent_operation_duration_seconds", "kybernate_agent_operation_throughput_bytes_per_second"} {
			labels := map[string]string{"operation": op}
			if strings.HasSuffix(h, "duration_seconds") {
				labels["result"] = "success"
			}
			if got := histogramCount(served[h], labels); got < uint64(want) {
				t.Errorf("%s%v has %d samples after a %s, want at least %d", h, labels, got, op, want)
			}
		}
	}

	documented := documentedMetrics(t, e.c.Root)
	for name := range served {
		if strings.HasPrefix(name, "kybernate_") && !documented[name] {
			t.Errorf("%s is served but not in docs/metrics.md", name)
		}
	}
	for name := range documented {
		if served[name] == nil {
			t.Errorf("docs/metrics.md lists %s, which neither binary serves", name)
		}
	}
}

// variable is a Grafana variable in a query ($scheduler_job, ${datasource}, $__rate_interval).
var variable = regexp.MustCompile(`\$\{?[a-zA-Z_]+\}?`)

// metricName finds the metric names of a query: ours and kube-scheduler's.
var metricName = regexp.MustCompile(`\b(kybernate|scheduler)_[a-zA-Z0-9_]+\b`)

// suspendAndResume fills both GPUs of the second node with low-priority pods, suspends one for
// a high-priority pod, deletes that pod and waits until the suspended one runs again.
func suspendAndResume(t *testing.T, e *env) {
	t.Helper()
	ctx := t.Context()
	ns := e.c.CreateNamespace(t)
	node := fmt.Sprintf("kwok-gpu-%d", nodes-1)
	for i := range gpusPerNode {
		name := fmt.Sprintf("batch-%d", i)
		if _, err := e.c.Client.CoreV1().Pods(ns).Create(ctx, gpuPod(ns, name, node, low, "60Gi"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		framework.WaitForPodRunning(ctx, t, e.c.Client, ns, name, time.Minute)
	}
	if _, err := e.c.Client.CoreV1().Pods(ns).Create(ctx, gpuPod(ns, "interactive", node, high, "40Gi"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.WaitForPodRunning(ctx, t, e.c.Client, ns, "interactive", time.Minute)
	var victim string
	framework.WaitFor(ctx, t, time.Minute, "a suspended batch pod", func(ctx context.Context) (bool, error) {
		pods, err := e.c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			if p.Annotations[kv1.AnnotationState] == string(kv1.PodSuspended) {
				victim = p.Name
				return true, nil
			}
		}
		return false, nil
	})
	// The plugin says who suspended it and that it is first to come back.
	why := decode[cli.Why](t, mustRun(t, e, "why", victim, "-n", ns, "-o", "json"))
	if why.Suspension == nil || why.Suspension.Reason != kv1.ReasonPreemption || why.Suspension.Preemptor == nil ||
		why.Suspension.Preemptor.Name != "interactive" || len(why.TurnOrder) == 0 || why.TurnOrder[0].Name != victim {
		t.Errorf("why %s after its preemption: %+v", victim, why)
	}
	if err := e.c.Client.CoreV1().Pods(ns).Delete(ctx, "interactive", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.WaitForPod(ctx, t, e.c.Client, ns, victim, time.Minute, "resumed", func(p *v1.Pod) bool {
		return p.Annotations[kv1.AnnotationState] == string(kv1.PodRunning)
	})
}

// scrape reads a metrics endpoint; the scheduler's with the admin's client certificate (its
// serving certificate is self-signed).
func scrape(t *testing.T, e *env, url string) map[string]*dto.MetricFamily {
	t.Helper()
	cfg := rest.CopyConfig(e.c.Config)
	cfg.Insecure, cfg.CAData, cfg.CAFile = true, nil, ""
	client, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var fams map[string]*dto.MetricFamily
	// The scheduler's authentication reads its client CA once it has started.
	framework.WaitFor(t.Context(), t, time.Minute, "metrics at "+url, func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Logf("scraping %s: %v", url, err)
			return false, nil
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			body, _ := io.ReadAll(resp.Body)
			t.Logf("scraping %s: %s: %s", url, resp.Status, body)
			return false, nil
		}
		var p expfmt.TextParser
		fams, err = p.TextToMetricFamilies(resp.Body)
		return err == nil, err
	})
	return fams
}

func histogramCount(f *dto.MetricFamily, labels map[string]string) uint64 {
	var n uint64
	for _, m := range f.GetMetric() {
		match := true
		for k, v := range labels {
			match = match && slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == k && l.GetValue() == v })
		}
		if match {
			n += m.GetHistogram().GetSampleCount()
		}
	}
	return n
}

// dashboardQueries returns every PromQL expression of the dashboard: panel targets and
// template variable queries.
func dashboardQueries(t *testing.T, root string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "manifests", "grafana", "kybernate.json"))
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d struct {
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("manifests/grafana/kybernate.json: %v", err)
	}
	var out []string
	var walk func([]json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("dashboard panel: %v", err)
			}
			for _, tg := range p.Targets {
				out = append(out, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("dashboard variable query: %v", err)
		}
		out = append(out, q.Query)
	}
	return out
}

// documentedMetrics are the metrics of the scheduler and the agent in the tables of
// docs/metrics.md: a row's first cell.
func documentedMetrics(t *testing.T, root string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `(kybernate_[a-z0-9_]+)` \\|")
	out := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		// kybernate-activator's metrics are checked against the activator it runs by
		// test/integration/scaletozero.
		if !strings.HasPrefix(m[1], "kybernate_activator_") {
			out[m[1]] = true
		}
	}
	if len(out) < 10 {
		t.Fatalf("docs/metrics.md lists %d metrics; the test reads it wrong", len(out))
	}
	return out
}
