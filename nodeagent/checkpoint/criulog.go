package checkpoint

import (
	"bufio"
	"io"
	"os"
	"strings"
)

// CRIU's log (dump.log in the work folder) is written by CRIU, in a container's checkpoint,
// with text that the container's processes influence (paths, names): it is read as untrusted
// input, bounded, and only ever quoted.

// maxLogLine is the longest log line read; a longer one ends the reading.
const maxLogLine = 1024 * 1024

// logTail returns the last lines of CRIU's log at path that say what went wrong, or "".
func logTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	return parseLogTail(f)
}

// parseLogTail returns "; criu's log says: " and the last five lines of the log that carry
// Error, error or Warn, or "" when none does.
func parseLogTail(r io.Reader) string {
	var lines []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), maxLogLine)
	for sc.Scan() {
		if l := sc.Text(); strings.Contains(l, "Error") || strings.Contains(l, "error") || strings.Contains(l, "Warn") {
			lines = append(lines, strings.TrimSpace(l))
			if len(lines) > 5 {
				lines = lines[1:]
			}
		}
	}
	if len(lines) == 0 {
		return ""
	}
	return "; criu's log says: " + strings.Join(lines, " | ")
}

// criuVersion reads "Version: 4.1.1" from the start of CRIU's log at path; "" when absent.
func criuVersion(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	return parseCRIUVersion(f)
}

// parseCRIUVersion returns the first word after "Version: " in the log's first 20 lines, or "".
func parseCRIUVersion(r io.Reader) string {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxLogLine)
	for i := 0; i < 20 && sc.Scan(); i++ {
		if _, v, ok := strings.Cut(sc.Text(), "Version: "); ok {
			if f := strings.Fields(v); len(f) > 0 {
				return f[0]
			}
		}
	}
	return ""
}
