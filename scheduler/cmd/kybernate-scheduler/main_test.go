package main

import (
	"os"
	"testing"

	"github.com/kybernate/kybernate/test/logformat"
)

// The test binary is the command when logformat asks for it: it has main's imports, so the
// JSON format registered by main is what the test sees.
func TestMain(m *testing.M) {
	if logformat.RunMain() {
		main()
	}
	os.Exit(m.Run())
}

func TestLoggingFormatJSON(t *testing.T) {
	// No kubeconfig: the scheduler logs why it cannot start and exits.
	logformat.CheckJSON(t, "--kubeconfig", "/nonexistent/kubeconfig", "--secure-port", "0")
}
