package checkpoint

import (
	"strings"
	"testing"
)

func TestParseCRIUVersion(t *testing.T) {
	for log, want := range map[string]string{
		"(00.000000) Version: 4.1.1 (gitid 0)\n(00.0001) Running\n": "4.1.1",
		"(00.000000) Version: \n":                                   "", // crashed once: no word after the key
		"(00.000000) Version:\t\n":                                  "",
		"no version here\n":                                         "",
		strings.Repeat("line\n", 20) + "Version: 9.9\n":             "", // only the first 20 lines count
		"": "",
	} {
		if got := parseCRIUVersion(strings.NewReader(log)); got != want {
			t.Errorf("parseCRIUVersion(%q) = %q, want %q", log, got, want)
		}
	}
}

func TestParseLogTail(t *testing.T) {
	log := "(0.1) Warn (criu/x.c:1): a\nok\n(0.2) Error (criu/y.c:2): b\n" +
		"e1 error\ne2 error\ne3 error\ne4 error\n"
	want := "; criu's log says: (0.2) Error (criu/y.c:2): b | e1 error | e2 error | e3 error | e4 error"
	if got := parseLogTail(strings.NewReader(log)); got != want {
		t.Errorf("parseLogTail = %q, want %q", got, want)
	}
	if got := parseLogTail(strings.NewReader("all fine\n")); got != "" {
		t.Errorf("parseLogTail of a clean log = %q, want \"\"", got)
	}
}

// CRIU's log holds text the container influences: parsing it never panics, and what it
// returns comes from the log.
func FuzzCRIULog(f *testing.F) {
	f.Add([]byte("(00.000000) Version: 4.1.1 (gitid 0)\n(00.1) Error (criu/cr-dump.c:2): Dumping FAILED.\n"))
	f.Add([]byte("Version: \n"))
	f.Add([]byte("(0.1) Warn: x\r\n\x00Error\n"))
	f.Fuzz(func(t *testing.T, log []byte) {
		v := parseCRIUVersion(strings.NewReader(string(log)))
		if v != "" && (!strings.Contains(string(log), v) || strings.ContainsAny(v, " \t\n")) {
			t.Errorf("version %q: not one word of the log", v)
		}
		tail := parseLogTail(strings.NewReader(string(log)))
		if tail == "" {
			return
		}
		lines := strings.Split(strings.TrimPrefix(tail, "; criu's log says: "), " | ")
		if !strings.HasPrefix(tail, "; criu's log says: ") || len(lines) > 5+strings.Count(string(log), " | ") {
			t.Errorf("tail %q: want at most 5 lines of the log", tail)
		}
	})
}
