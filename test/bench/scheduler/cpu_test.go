package main

import (
	"maps"
	"strings"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	// A command name with spaces and a parenthesis, as /proc shows it; utime 250, stime 40.
	stat := "4242 (kube (sched) x) S 1 4242 4242 0 -1 4194560 9003 0 0 0 250 40 0 0 20 0 14 0 1234 0 0"
	got, err := parseStat(4242, []byte(stat))
	if err != nil {
		t.Fatal(err)
	}
	if want := 2900 * time.Millisecond; got != want {
		t.Errorf("parseStat = %s, want %s", got, want)
	}
	if _, err := parseStat(1, []byte("1 (init S 0")); err == nil {
		t.Error("a truncated stat line parsed")
	}
}

func TestParseCensus(t *testing.T) {
	metrics := `# HELP apiserver_request_total x
apiserver_request_total{code="200",component="apiserver",dry_run="",group="kybernate.io",resource="gpunodes",scope="resource",subresource="status",verb="PUT",version="v1alpha1"} 40
apiserver_request_total{code="409",component="apiserver",dry_run="",group="kybernate.io",resource="gpunodes",scope="resource",subresource="status",verb="PUT",version="v1alpha1"} 2
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="binding",verb="POST",version="v1"} 7
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="cluster",subresource="",verb="LIST",version="v1"} 99
apiserver_request_total_other{verb="PUT",resource="pods"} 5
apiserver_watch_events_total{group="kybernate.io",resource="gpunodes",version="v1alpha1"} 120
`
	got, err := parseCensus(strings.NewReader(metrics))
	if err != nil {
		t.Fatal(err)
	}
	want := census{"PUT gpunodes/status": 42, "POST pods/binding": 7, "watch events gpunodes": 120}
	if !maps.Equal(got, want) {
		t.Errorf("parseCensus = %v, want %v", got, want)
	}
	if d := (census{"PUT gpunodes/status": 50, "POST pods/binding": 7, "watch events gpunodes": 120}).since(want); !maps.Equal(d, census{"PUT gpunodes/status": 8}) {
		t.Errorf("since = %v, want only the 8 new status writes", d)
	}
}
