package framework

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kybernate/kybernate/test/ci"
)

// Kybernate's own binaries, by name, and the packages they are built from.
var binaries = map[string]string{
	"kybernate-scheduler": "./scheduler/cmd/kybernate-scheduler",
	"kybernate-agent":     "./nodeagent/cmd/kybernate-agent",
	"kybernate-extender":  "./scheduler/cmd/kybernate-extender",
	"kybernate-activator": "./activator/cmd/kybernate-activator",
}

// Component is one of Kybernate's binaries running against the test cluster.
type Component struct {
	Name string
	// Log is the file that holds its stdout and stderr.
	Log string
	cmd *exec.Cmd
}

var (
	componentsMu sync.Mutex
	components   []*Component
	builds       sync.Map // name -> *buildResult
)

type buildResult struct {
	once sync.Once
	path string
	err  error
}

// Binary builds one of Kybernate's binaries from the working tree, once per test binary.
func (c *Cluster) Binary(t testing.TB, name string) string {
	t.Helper()
	pkg, ok := binaries[name]
	if !ok {
		t.Fatalf("framework: unknown binary %q", name)
	}
	v, _ := builds.LoadOrStore(name, &buildResult{})
	b := v.(*buildResult)
	b.once.Do(func() {
		dir := filepath.Join(c.workDir(), "bin")
		if b.err = os.MkdirAll(dir, 0o755); b.err != nil {
			return
		}
		b.path = filepath.Join(dir, name)
		args := []string{"build", "-o", b.path}
		if raceEnabled() {
			args = append(args, "-race")
		}
		// Test packages run in parallel and each builds the binaries it starts: one at a time,
		// so that the others find the first's results in the build cache instead of compiling
		// the same packages (with -race, minutes on two cores) side by side.
		unlock, err := lockFile(filepath.Join(c.Root, ".cache", "test-binaries.lock"))
		if err != nil {
			b.err = err
			return
		}
		defer unlock()
		start := time.Now()
		cmd := exec.Command("go", append(args, pkg)...)
		cmd.Dir = c.Root
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go %s: %w\n%s", strings.Join(append(args, pkg), " "), err, out)
			return
		}
		fmt.Fprintf(os.Stderr, "framework: go %s took %s\n", strings.Join(append(args, pkg), " "), time.Since(start).Round(100*time.Millisecond))
	})
	if b.err != nil {
		t.Fatalf("framework: %v", b.err)
	}
	return b.path
}

// Start runs one of Kybernate's binaries with args until the test package ends; its output
// goes to a log file in the cluster's folder, which is kept when a test fails.
func (c *Cluster) Start(t testing.TB, name string, args ...string) *Component {
	t.Helper()
	return c.startPath(t, name, c.Binary(t, name), args...)
}

// StartControlPlane runs one of the control plane's stock binaries that hack/build-controlplane.sh
// built (kube-scheduler, say) with args until the test package ends, logging as Start does.
func (c *Cluster) StartControlPlane(t testing.TB, name string, args ...string) *Component {
	t.Helper()
	return c.startPath(t, name, filepath.Join(c.binDir(), name), args...)
}

func (c *Cluster) startPath(t testing.TB, name, path string, args ...string) *Component {
	t.Helper()
	logDir := filepath.Join(c.workDir(), "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(logDir, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano()))
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The component dies with the test binary, however that ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("framework: starting %s: %v", name, err)
	}
	comp := &Component{Name: name, Log: logPath, cmd: cmd}
	componentsMu.Lock()
	components = append(components, comp)
	componentsMu.Unlock()
	t.Logf("started %s (pid %d, log %s)", name, cmd.Process.Pid, logPath)
	return comp
}

// Stop ends the component: SIGTERM, then SIGKILL after 10 s.
func (p *Component) Stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// Kill ends the component at once, as a crash would.
func (p *Component) Kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}

// lockFile takes an exclusive lock on path (created if need be) and returns its release.
func lockFile(path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// raceEnabled reports whether Kybernate's binaries are built with -race: KYBERNATE_RACE when
// set, otherwise in CI (test/ci).
func raceEnabled() bool {
	if v, err := strconv.ParseBool(os.Getenv("KYBERNATE_RACE")); err == nil {
		return v
	}
	return ci.Enabled()
}

// raceReport is how the race detector starts a report in a binary's output.
const raceReport = "WARNING: DATA RACE"

// stopComponents ends every component the package started. It returns an error naming the
// components whose log holds a data race report: a race in a component fails the package.
func stopComponents() error {
	componentsMu.Lock()
	defer componentsMu.Unlock()
	var raced []string
	for _, p := range components {
		p.Stop()
		if data, err := os.ReadFile(p.Log); err == nil && bytes.Contains(data, []byte(raceReport)) {
			raced = append(raced, fmt.Sprintf("%s (log %s)", p.Name, p.Log))
		}
	}
	components = nil
	if len(raced) > 0 {
		return fmt.Errorf("data race reported by %s", strings.Join(raced, ", "))
	}
	return nil
}

// workDir is where components keep binaries and logs: the cluster's folder, or a folder
// under .cache for a cluster given by KYBERNATE_KUBECONFIG.
func (c *Cluster) workDir() string {
	if c.Dir != "" {
		return c.Dir
	}
	return filepath.Join(c.Root, ".cache", "test-components")
}
