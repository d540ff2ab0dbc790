package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"k8s.io/client-go/kubernetes"
)

// census counts kube-apiserver's write requests (POST, PUT, PATCH, DELETE) by verb and
// resource ("PUT gpunodes/status"), from its apiserver_request_total counter, and the events it
// sent to watchers by resource ("watch events pods"), from apiserver_watch_events_total: which
// writes a contender's pods cause, and what every watcher decodes.
type census map[string]float64

// scrapeCensus reads the write counters of kube-apiserver's /metrics.
func scrapeCensus(ctx context.Context, client kubernetes.Interface) (census, error) {
	body, err := client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver /metrics: %w", err)
	}
	return parseCensus(bytes.NewReader(body))
}

// parseCensus sums apiserver_request_total over codes and scopes per verb and resource, and
// apiserver_watch_events_total per resource.
func parseCensus(r io.Reader) (census, error) {
	w := census{}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		line := s.Text()
		name, rest, ok := strings.Cut(line, "{")
		end := strings.LastIndexByte(rest, '}')
		if !ok || end < 0 || (name != "apiserver_request_total" && name != "apiserver_watch_events_total") {
			continue
		}
		labels := promLabels(rest[:end])
		key := "watch events " + labels["resource"]
		if name == "apiserver_request_total" {
			switch labels["verb"] {
			case "POST", "PUT", "PATCH", "DELETE":
			default:
				continue
			}
			key = labels["verb"] + " " + labels["resource"]
			if sub := labels["subresource"]; sub != "" {
				key += "/" + sub
			}
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest[end+1:]), 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %q: %w", name, line, err)
		}
		w[key] += v
	}
	return w, s.Err()
}

// promLabels parses `a="x",b="y"`; label values of apiserver_request_total hold no quotes.
func promLabels(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if ok {
			out[k] = strings.Trim(v, `"`)
		}
	}
	return out
}

func (w census) since(before census) census {
	d := census{}
	for k, v := range w {
		if n := v - before[k]; n > 0 {
			d[k] = n
		}
	}
	return d
}

// censusReport writes the API writes and watch events per pod placed (median over the repetitions) of each kind
// that some contender makes at least 0.05 times per pod.
func censusReport(out io.Writer, cs []*contender, runs [][]result) {
	per := make([]map[string]float64, len(cs))
	kinds := map[string]bool{}
	for i := range cs {
		per[i] = map[string]float64{}
		all := map[string][]float64{}
		for _, r := range runs[i] {
			for k, v := range r.api {
				all[k] = append(all[k], v/float64(max(1, r.placed)))
			}
		}
		for k, v := range all {
			for len(v) < len(runs[i]) {
				v = append(v, 0) // a repetition without this kind
			}
			if per[i][k] = median(v); per[i][k] >= 0.05 {
				kinds[k] = true
			}
		}
	}
	keys := make([]string, 0, len(kinds))
	for k := range kinds {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	fmt.Fprintln(out, "\nkube-apiserver write requests and watch events sent per pod placed (median over the repetitions; "+
		"apiserver_request_total and apiserver_watch_events_total between the start of the creations and the last pod bound; "+
		"kinds of at least 0.05 per pod):")
	fmt.Fprintln(out)
	fmt.Fprintf(out, "| request | %s |\n|---|%s\n", strings.Join(labels(cs), " | "), strings.Repeat("---|", len(cs)))
	for _, k := range keys {
		fmt.Fprintf(out, "| %s |", k)
		for i := range cs {
			fmt.Fprintf(out, " %.2f |", per[i][k])
		}
		fmt.Fprintln(out)
	}
}

func labels(cs []*contender) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.label
	}
	return out
}
