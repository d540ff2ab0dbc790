package connect

import (
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
)

// Every part of a program that asks gets the same client and factory, built once, talking JSON.
func TestSharedOnce(t *testing.T) {
	var s Shared
	c1, f1, err := s.Get(&rest.Config{Host: "https://one.example"})
	if err != nil {
		t.Fatal(err)
	}
	c2, f2, err := s.Get(&rest.Config{Host: "https://two.example"})
	if err != nil {
		t.Fatal(err)
	}
	if c1 != c2 || f1 != f2 {
		t.Error("a second Get built another client or informer factory")
	}
	if f1 == nil {
		t.Fatal("no informer factory")
	}
	if got := CRDConfig(&rest.Config{}).ContentType; got != runtime.ContentTypeJSON {
		t.Errorf("CRDConfig content type %q, want JSON", got)
	}
}
