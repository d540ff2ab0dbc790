package extender

import (
	"errors"
	"net/http"
	"testing"

	"github.com/kybernate/kybernate/apis/config"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// Extender requests come over HTTP from whatever can reach the port: every body either decodes
// into a request with the fields the verbs rely on, or is refused as a bad request (HTTP 400)
// and changes nothing. Seeds in testdata/fuzz/FuzzRequests.
func FuzzRequests(f *testing.F) {
	f.Add(uint8(0), []byte(`{"pod":{"metadata":{"name":"p","namespace":"ns","uid":"p"}},"nodenames":["a"]}`))
	f.Add(uint8(2), []byte(`{"pod":{"metadata":{"name":"p","namespace":"ns","uid":"p"}},"nodeNameToMetaVictims":{"a":{"pods":[{"uid":"v"}]}}}`))
	f.Add(uint8(3), []byte(`{"podName":"p","podNamespace":"ns","podUID":"p","node":"a"}`))
	paths := []string{PathFilter, PathPrioritize, PathPreempt, PathBind}
	fx := newFixture(f, config.MostAllocated, []*kv1.GPUNode{gpuNode("a", 80)})
	f.Fuzz(func(t *testing.T, verb uint8, body []byte) {
		path := paths[int(verb)%len(paths)]
		var err error
		switch path {
		case PathFilter, PathPrioritize:
			var args any
			if args, err = DecodeFilterArgs(body); err == nil && args == nil {
				t.Fatal("no error and no args")
			}
		case PathPreempt:
			_, err = DecodePreemptionArgs(body)
		case PathBind:
			_, err = DecodeBindingArgs(body)
		}
		var br *badRequest
		if err != nil && !errors.As(err, &br) {
			t.Fatalf("decode error %v is no bad request", err)
		}
		code, _ := fx.postRaw(t, path, body, nil)
		if err != nil && code != http.StatusBadRequest {
			t.Fatalf("%s refused by the decoder but answered HTTP %d", path, code)
		}
		if err == nil && code != http.StatusOK {
			t.Fatalf("%s decoded but answered HTTP %d", path, code)
		}
		if fx.ext.ledger.Len() != 0 || len(fx.created) != 0 {
			t.Fatalf("%s %q placed something: %d reservations, %d GPUCheckpoints", path, body, fx.ext.ledger.Len(), len(fx.created))
		}
	})
}
