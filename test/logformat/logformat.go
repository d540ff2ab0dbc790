// Package logformat tests that a command writes JSON logs with --logging-format=json. A
// command's main_test.go runs the test binary itself as the command (RunMain in TestMain),
// so the check covers exactly the log formats main registers.
package logformat

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// runMainEnv tells a test binary to run main instead of its tests.
const runMainEnv = "KYBERNATE_LOGFORMAT_RUN_MAIN"

// RunMain says whether the test binary was started by CheckJSON to be the command; its
// arguments are then in os.Args already, in place of the test flags.
func RunMain() bool {
	if os.Getenv(runMainEnv) != "1" {
		return false
	}
	var args []string
	if err := json.Unmarshal([]byte(os.Getenv(runMainEnv+"_ARGS")), &args); err != nil {
		panic(fmt.Sprintf("%s_ARGS: %v", runMainEnv, err)) // set by run below
	}
	os.Args = append([]string{os.Args[0]}, args...)
	return true
}

// CheckJSON starts the command with args and --logging-format=json, waits for it to end, and
// fails the test unless it wrote at least one log line and every line on stderr is a JSON
// object with a message. It also starts the command without the flag and fails unless that
// output is not JSON, so the check cannot pass on output that never changes format.
func CheckJSON(t *testing.T, args ...string) {
	t.Helper()
	CheckJSONBesides(t, "", args...)
}

// CheckJSONBesides is CheckJSON for a command that also writes output for its user on stderr,
// kubectl's "error: ..." say: lines that start with userPrefix are not log lines.
func CheckJSONBesides(t *testing.T, userPrefix string, args ...string) {
	t.Helper()
	var lines []string
	for _, l := range run(t, append([]string{"--logging-format=json"}, args...)) {
		if userPrefix == "" || !strings.HasPrefix(l, userPrefix) {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		t.Fatal("no log lines with --logging-format=json")
	}
	for _, l := range lines {
		var entry map[string]any
		if err := json.Unmarshal([]byte(l), &entry); err != nil {
			t.Errorf("log line is not JSON: %v\n%s", err, l)
			continue
		}
		if _, ok := entry["msg"]; !ok {
			t.Errorf("JSON log line has no msg: %s", l)
		}
	}
	for _, l := range run(t, args) {
		if json.Valid([]byte(l)) {
			t.Fatalf("without --logging-format the command logs JSON too, so the check proves nothing: %s", l)
		}
	}
}

// run runs the test binary as the command and returns its non-empty stderr lines.
func run(t *testing.T, args []string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	encoded, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), runMainEnv+"=1", runMainEnv+"_ARGS="+string(encoded))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%v did not exit: %s", args, stderr.String())
	}
	if err == nil {
		t.Fatalf("%v exited 0; the test expects it to fail for want of a cluster", args)
	}
	var lines []string
	sc := bufio.NewScanner(&stderr)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}
