package scaletozero

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/kybernate/kybernate/test/integration/framework"
)

// The activator holds requests in memory: killed while it holds some, their clients see the
// connection break (no answer, which they retry like any broken connection), none of them
// reaches the pod later, and none is answered twice. The activator started again serves the
// Service: a new request is answered by the pod (woken by the wake asked for before the kill,
// or by this request).
func TestActivatorRestartWhileHolding(t *testing.T) {
	e := setup(t)
	e.deploy(t, "1s", nil)
	e.waitAsleep(t)

	const n = 3
	answers := make(chan answer, n)
	for i := range n {
		go func() { answers <- e.send(t.Context(), i) }()
	}
	held := fmt.Sprintf(`kybernate_activator_held_requests{service="%s/llm"}`, e.ns)
	framework.WaitFor(t.Context(), t, 30*time.Second, "3 held requests", func(context.Context) (bool, error) {
		return samples(e.scrape(t))[held] == n, nil
	})
	e.a.comp.Kill()
	broken, answered := 0, 0
	for range n {
		a := <-answers
		switch {
		case a.err != nil:
			broken++
		case a.status == http.StatusOK:
			answered++ // the wake beat the kill
		default:
			t.Errorf("request %d: %d %q, want a broken connection or an answer from the pod", a.seq, a.status, a.body)
		}
	}
	t.Logf("killed while holding %d requests: %d connections broke, %d answered before the kill", n, broken, answered)

	e.a.comp = e.c.Start(t, "kybernate-activator", e.a.args...)
	e.a.waitReady(t)
	var a answer
	framework.WaitFor(t.Context(), t, time.Minute, "a request answered by the restarted activator", func(ctx context.Context) (bool, error) {
		a = e.send(ctx, 100)
		return a.err == nil, nil
	})
	if a.status != http.StatusOK || a.body != "answer 100" {
		t.Errorf("request after the restart: %d %q", a.status, a.body)
	}
	count := map[string]int{}
	for _, s := range e.a.model.seen(e.ns) {
		count[s.seq]++
	}
	if count["100"] != 1 {
		t.Errorf("the pod got the request after the restart %d times", count["100"])
	}
	if got := count["0"] + count["1"] + count["2"]; got != answered {
		t.Errorf("the pod got %d of the requests held at the kill, %d were answered: a request was lost after reaching the pod or reached it after its connection broke", got, answered)
	}
}
