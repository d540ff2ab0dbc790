package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// defaultName and extenderName are the profiles of the stock kube-schedulers this program starts;
// the cluster's own default-scheduler keeps its lower client limits and serves nothing here.
const (
	defaultName  = "bench-default-scheduler"
	extenderName = "bench-extender-scheduler"
	kybernate    = "kybernate-scheduler"
)

// contender is one way of scheduling the bench's pods. Its processes run only while it is
// measured, so no contender competes with another's idle work.
type contender struct {
	key       string // short name, in namespaces and logs
	label     string // its row in the report
	scheduler string // schedulerName of its pods, and the profile label of its metrics
	gpu       bool   // whether its pods ask for kybernate.io/gpu
	profiled  bool   // -cpuprofile profiles it
	start     func(ctx context.Context, log string) (*instance, error)
}

// instance is a started contender: its processes, and the kube-scheduler whose metrics count.
type instance struct {
	procs    []*exec.Cmd
	metrics  endpoint
	extender string // the extender's URL, when there is one
}

func (in *instance) stop() {
	for i := len(in.procs) - 1; i >= 0; i-- {
		stopProcess(in.procs[i])
	}
}

// newContenders returns the default scheduler, kybernate-scheduler of this tree, the baseline
// build (when given) and kube-scheduler + kybernate-extender.
func newContenders(o options, kubeconfig string, baseline *baselineBuild) ([]*contender, error) {
	shipped, err := os.ReadFile(filepath.Join(o.root, "manifests", "scheduler", "config.yaml"))
	if err != nil {
		return nil, err
	}
	ctrl, err := os.ReadFile(filepath.Join(o.root, "manifests", "scheduler", "controllers.yaml"))
	if err != nil {
		return nil, err
	}
	ctrlFile, err := benchControllers(o, "bench-controllers.yaml", ctrl)
	if err != nil {
		return nil, err
	}
	kyb := func(key, label, binary string, profiled bool, config []byte, ctrlFile string) *contender {
		// One contender runs at a time: no leader election for the profiles or the controllers.
		cfg := strings.Replace(string(config), "leaderElect: true", "leaderElect: false", 1) + clientConnection(o, kubeconfig)
		var args []string
		if ctrlFile != "" {
			args = []string{"--controllers-config", ctrlFile}
		}
		return &contender{key: key, label: label, scheduler: kybernate, gpu: true, profiled: profiled,
			start: func(ctx context.Context, log string) (*instance, error) {
				return startScheduler(ctx, o, key, binary, cfg, log, args...)
			}}
	}
	cs := []*contender{
		{key: "default", label: "default kube-scheduler", scheduler: defaultName, profiled: true,
			start: func(ctx context.Context, log string) (*instance, error) {
				return startScheduler(ctx, o, "default", o.kubeScheduler, schedulerConfig(o, kubeconfig, defaultName, ""), log)
			}},
		kyb("kybernate", "kybernate-scheduler (this tree, "+treeName(o.root)+")", filepath.Join(o.root, o.bin, "kybernate-scheduler"), true, shipped, ctrlFile),
	}
	if baseline != nil {
		config, bctrl := shipped, ctrlFile
		if baseline.config != nil {
			config, bctrl = baseline.config, ""
			if baseline.controllers != nil {
				if bctrl, err = benchControllers(o, "bench-baseline-controllers.yaml", baseline.controllers); err != nil {
					return nil, err
				}
			}
		}
		cs = append(cs, kyb("baseline", "kybernate-scheduler (baseline "+baseline.name+")", baseline.binary, false, config, bctrl))
	}
	if !o.skipExtender {
		cs = append(cs, &contender{key: "extender", label: "kube-scheduler + kybernate-extender", scheduler: extenderName, gpu: true,
			start: func(ctx context.Context, log string) (*instance, error) {
				return startExtenderPair(ctx, o, kubeconfig, ctrlFile, log)
			}})
	}
	return cs, nil
}

// benchControllers writes a controllers configuration without leader election (one contender
// runs at a time) to the cluster folder and returns its path.
func benchControllers(o options, name string, config []byte) (string, error) {
	file := filepath.Join(o.clusterDir, name)
	return file, os.WriteFile(file, []byte(strings.Replace(string(config), "leaderElect: true", "leaderElect: false", 1)), 0o644)
}

// schedulerConfig is a stock kube-scheduler's configuration with one profile (and an extender).
func schedulerConfig(o options, kubeconfig, profile, extender string) string {
	cfg := "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n" +
		"leaderElection:\n  leaderElect: false\nprofiles:\n- schedulerName: " + profile + "\n" +
		clientConnection(o, kubeconfig)
	if extender != "" {
		// As docs/extender.md configures it.
		cfg += "extenders:\n- urlPrefix: " + extender + "\n  filterVerb: filter\n  prioritizeVerb: prioritize\n" +
			"  preemptVerb: preempt\n  bindVerb: bind\n  weight: 1\n  nodeCacheCapable: true\n  ignorable: false\n" +
			"  httpTimeout: 10s\n  managedResources:\n  - name: kybernate.io/gpu\n    ignoredByScheduler: true\n"
	}
	return cfg
}

func clientConnection(o options, kubeconfig string) string {
	return fmt.Sprintf("clientConnection:\n  kubeconfig: %s\n  qps: %d\n  burst: %d\n", kubeconfig, o.clientQPS, o.clientBurst)
}

// startScheduler starts kube-scheduler or kybernate-scheduler with a configuration, serving
// /metrics and /debug/pprof (profiling is on by default in a KubeSchedulerConfiguration) on a
// free port without authentication, and waits until it is ready (informers synced).
func startScheduler(ctx context.Context, o options, key, path, config, log string, args ...string) (*instance, error) {
	file := filepath.Join(o.clusterDir, "bench-"+key+".yaml")
	if err := os.WriteFile(file, []byte(config), 0o644); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	in := &instance{metrics: newEndpoint(fmt.Sprintf("https://127.0.0.1:%d", port))}
	cmd, err := start(ctx, path, log,
		append([]string{"--config", file, "--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(port),
			"--authorization-always-allow-paths", "/healthz,/readyz,/livez,/metrics,/debug/pprof/*"}, args...)...)
	if err != nil {
		return nil, err
	}
	in.procs = append(in.procs, cmd)
	if err := in.metrics.waitReady(ctx, 2*time.Minute); err != nil {
		in.stop()
		return nil, fmt.Errorf("%w; %s", err, logTail(log, 20))
	}
	return in, nil
}

// logTail returns the last lines of a process's log for an error message: the cluster folder
// with the whole log is removed when the bench ends.
func logTail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("no log: %v", err)
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return fmt.Sprintf("last lines of %s:\n%s", path, strings.Join(all[max(0, len(all)-lines):], "\n"))
}

// startExtenderPair starts kybernate-extender (with the controllers, at the schedulers' client
// limits) and a stock kube-scheduler that calls it.
func startExtenderPair(ctx context.Context, o options, kubeconfig, ctrlFile, log string) (*instance, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ext, err := start(ctx, filepath.Join(o.root, o.bin, "kybernate-extender"), strings.TrimSuffix(log, ".log")+"-extender.log",
		"--kubeconfig", kubeconfig, "--bind-address", addr, "--controllers-config", ctrlFile,
		"--kube-api-qps", fmt.Sprint(o.clientQPS), "--kube-api-burst", fmt.Sprint(o.clientBurst))
	if err != nil {
		return nil, err
	}
	extEndpoint := newEndpoint("http://" + addr)
	if err := extEndpoint.waitReady(ctx, 2*time.Minute); err != nil {
		stopProcess(ext)
		return nil, err
	}
	in, err := startScheduler(ctx, o, "extender", o.kubeScheduler, schedulerConfig(o, kubeconfig, extenderName, "http://"+addr), log)
	if err != nil {
		stopProcess(ext)
		return nil, err
	}
	in.procs = append([]*exec.Cmd{ext}, in.procs...)
	in.extender = extEndpoint.url
	return in, nil
}

// baselineBuild is kybernate-scheduler built from another commit, with that commit's shipped
// configuration (manifests/scheduler): config.yaml, and controllers.yaml where the commit has
// one (before the controllers got their own configuration, the plugins started them).
type baselineBuild struct {
	name, binary        string
	config, controllers []byte
}

// baselineScheduler builds kybernate-scheduler at -baseline-ref in a temporary git worktree, or
// takes -baseline-binary; nil without either.
func baselineScheduler(ctx context.Context, o options) (*baselineBuild, error) {
	if o.baselineBinary != "" {
		return &baselineBuild{name: filepath.Base(o.baselineBinary), binary: o.baselineBinary}, nil // this tree's configuration
	}
	if o.baselineRef == "" {
		return nil, nil
	}
	rev, err := exec.CommandContext(ctx, "git", "-C", o.root, "rev-parse", "--short", o.baselineRef+"^{commit}").Output()
	if err != nil {
		return nil, fmt.Errorf("baseline %q is not a commit: %w", o.baselineRef, err)
	}
	name := strings.TrimSpace(string(rev))
	tree, err := os.MkdirTemp("", "bench-baseline-")
	if err != nil {
		return nil, err
	}
	tree = filepath.Join(tree, "src")
	defer func() {
		_ = exec.Command("git", "-C", o.root, "worktree", "remove", "--force", tree).Run()
		_ = os.RemoveAll(filepath.Dir(tree))
	}()
	if out, err := exec.CommandContext(ctx, "git", "-C", o.root, "worktree", "add", "--detach", tree, name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("git worktree add %s: %w: %s", name, err, out)
	}
	binary := filepath.Join(o.clusterDir, "kybernate-scheduler-"+name)
	fmt.Fprintf(os.Stderr, "building the baseline kybernate-scheduler at %s\n", name)
	build := exec.CommandContext(ctx, "go", "build", "-o", binary, "./scheduler/cmd/kybernate-scheduler")
	build.Dir, build.Stderr = tree, os.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("building kybernate-scheduler at %s: %w", name, err)
	}
	b := &baselineBuild{name: name, binary: binary}
	if b.config, err = os.ReadFile(filepath.Join(tree, "manifests", "scheduler", "config.yaml")); err != nil {
		return nil, err
	}
	if b.controllers, err = os.ReadFile(filepath.Join(tree, "manifests", "scheduler", "controllers.yaml")); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	return b, nil
}

// treeName is the commit of the tree the bench runs in, with "+changes" when files differ from
// it (bin/ is built from the tree by make bench-scheduler).
func treeName(root string) string {
	rev, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown commit"
	}
	name := strings.TrimSpace(string(rev))
	if out, err := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(out) > 0 {
		name += "+changes"
	}
	return name
}
