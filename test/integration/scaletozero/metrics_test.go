package scaletozero

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/kybernate/kybernate/test/integration/framework"
)

// scrape reads the activator's /metrics.
func (e env) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + e.a.metric + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var parser expfmt.TextParser
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return families
}

// sample is one series of a scrape as `name{label="value"}` (counters and gauges: value;
// histograms: sample count).
func samples(families map[string]*dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			key := name
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// checkMetrics fails the test unless each series has at least its value.
func (e env) checkMetrics(t *testing.T, atLeast map[string]float64) {
	t.Helper()
	got := samples(e.scrape(t))
	for series, want := range atLeast {
		if got[series] < want {
			t.Errorf("%s = %v, want at least %v", series, got[series], want)
		}
	}
}

var activatorRow = regexp.MustCompile("^\\| `(kybernate_activator_[a-z_]+)`")

// docs/metrics.md lists exactly the kybernate_activator_* metrics the activator serves; after a
// wake the wake latency histogram has a sample.
func TestServedMetricsDocumented(t *testing.T) {
	e := setup(t)
	root := e.c.Root
	b, err := os.ReadFile(filepath.Join(root, "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if m := activatorRow.FindStringSubmatch(line); m != nil {
			documented[m[1]] = true
		}
	}
	if len(documented) < 3 {
		t.Fatalf("docs/metrics.md lists %d activator metrics; the test reads it wrong", len(documented))
	}
	// The held requests gauge has a series per Service behind the activator.
	e.service(t)
	var served map[string]*dto.MetricFamily
	framework.WaitFor(t.Context(), t, 30*time.Second, "the Service's series of kybernate_activator_held_requests", func(context.Context) (bool, error) {
		served = e.scrape(t)
		_, ok := samples(served)[`kybernate_activator_held_requests{service="`+e.ns+`/llm"}`]
		return ok, nil
	})
	for name := range served {
		if strings.HasPrefix(name, "kybernate_activator_") && !documented[name] {
			t.Errorf("%s is served but not in docs/metrics.md", name)
		}
	}
	for name := range documented {
		if served[name] == nil {
			t.Errorf("docs/metrics.md lists %s, which the activator does not serve", name)
		}
	}
}
