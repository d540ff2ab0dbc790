package main

import (
	"os"
	"testing"

	"github.com/kybernate/kybernate/test/logformat"
)

// The test binary is the command when logformat asks for it.
func TestMain(m *testing.M) {
	if logformat.RunMain() {
		main()
	}
	os.Exit(m.Run())
}

func TestLoggingFormatJSON(t *testing.T) {
	// No cluster: the plugin logs its command at -v=4, then fails with an error for the user.
	logformat.CheckJSONBesides(t, "error: ", "-v=4", "gpus", "--kubeconfig", "/nonexistent/kubeconfig")
}
