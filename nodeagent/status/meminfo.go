package status

import (
	"bufio"
	"errors"
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
	return m.read(ParseMemAvailable)
}

// MemTotal returns MemTotal from the file, in bytes.
func (m Meminfo) MemTotal() (int64, error) {
	return m.read(func(r io.Reader) (int64, error) {
		n, found, err := KiBField(r, "meminfo", "MemTotal")
		if err == nil && !found {
			err = errors.New("meminfo has no MemTotal line")
		}
		return n, err
	})
}

// read opens the file (default /proc/meminfo) and parses it with parse.
func (m Meminfo) read(parse func(io.Reader) (int64, error)) (int64, error) {
	path := m.Path
	if path == "" {
		path = "/proc/meminfo"
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("reading host memory: %w", err)
	}
	defer f.Close()
	return parse(f)
}

// ParseMemAvailable reads the MemAvailable line of a meminfo file ("MemAvailable: 123 kB").
func ParseMemAvailable(r io.Reader) (int64, error) {
	n, found, err := KiBField(r, "meminfo", "MemAvailable")
	if err == nil && !found {
		err = fmt.Errorf("meminfo has no MemAvailable line (kernel older than 3.14?)")
	}
	return n, err
}

// KiBField reads the "key: <n> kB" line of a /proc file (what: meminfo, a process's status),
// in bytes; found is false when the file has no such line.
func KiBField(r io.Reader, what, key string) (bytes int64, found bool, err error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), key+":")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, true, fmt.Errorf("malformed %s line %q: want \"%s: <n> kB\"", what, sc.Text(), key)
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil || kb < 0 {
			return 0, true, fmt.Errorf("malformed %s line %q: want \"%s: <n> kB\"", what, sc.Text(), key)
		}
		return kb * 1024, true, nil
	}
	if err := sc.Err(); err != nil {
		return 0, false, fmt.Errorf("reading %s: %w", what, err)
	}
	return 0, false, nil
}

// FixedMemory is HostMemory with a constant value, for tests.
type FixedMemory int64

// MemAvailable returns m.
func (m FixedMemory) MemAvailable() (int64, error) { return int64(m), nil }
