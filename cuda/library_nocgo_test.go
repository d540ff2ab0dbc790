//go:build !cgo

package cuda

import (
	"errors"
	"testing"
)

func TestNewWithoutCgo(t *testing.T) {
	lib, err := New()
	if err == nil {
		lib.Close()
		t.Fatal("New succeeded in a build without cgo")
	}
	if !errors.Is(err, ErrNoDriver) {
		t.Errorf("New() = %v, want it to match ErrNoDriver", err)
	}
}
