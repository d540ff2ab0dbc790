package status

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// HostMemory reports how much host memory is available for new allocations.
type HostMemory interface {
	MemAvailable() (int64, error)
}

// Meminfo is HostMemory from a meminfo file: /proc/meminfo, the host's in the agent's pod.
type Meminfo struct {
	Path string
}

var _ HostMemory = Meminfo{}

// MemAvailable returns MemAvailable from the file, in bytes.
func (m Meminfo) MemAvailable() (int64, error) {
	path := m.Path
	if path == "" {
		path = "/proc/meminfo"
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("reading host memory: %w", err)
	}
	defer f.Close()
	return ParseMemAvailable(f)
}

// ParseMemAvailable reads the MemAvailable line of a meminfo file ("MemAvailable: 123 kB").
func ParseMemAvailable(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("malformed meminfo line %q: want \"MemAvailable: <n> kB\"", sc.Text())
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil || kb < 0 {
			return 0, fmt.Errorf("malformed meminfo line %q: %w", sc.Text(), err)
		}
		return kb * 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading meminfo: %w", err)
	}
	return 0, fmt.Errorf("meminfo has no MemAvailable line (kernel older than 3.14?)")
}

// FixedMemory is HostMemory with a constant value, for tests.
type FixedMemory int64

// MemAvailable returns m.
func (m FixedMemory) MemAvailable() (int64, error) { return int64(m), nil }
