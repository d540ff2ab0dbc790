// Package objectstore starts a real S3-compatible object store for tests and benchmarks:
// SeaweedFS (`weed mini`, one process on loopback), built from the Go module proxy by
// hack/build-seaweedfs.sh and started and stopped by hack/seaweedfs-up.sh and
// hack/seaweedfs-down.sh. It is a real server, not a fake.
package objectstore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/kybernate/kybernate/nodeagent/storage"
)

// Server is a running SeaweedFS.
type Server struct {
	root string
	// Dir holds its data, log (weed.log) and s3.env.
	Dir string
	// Config reaches it: endpoint, bucket, region, path style, credentials.
	Config storage.S3Config
}

// Build builds weed (seconds when it is up to date; the first build takes long).
func Build(ctx context.Context, root string) error {
	out, err := run(ctx, root, nil, "hack/build-seaweedfs.sh")
	if err != nil {
		return fmt.Errorf("hack/build-seaweedfs.sh: %w\n%s", err, out)
	}
	return nil
}

// Start starts a server on loopback with its data in dir and waits until its S3 endpoint
// answers.
func Start(ctx context.Context, root, dir string) (*Server, error) {
	return StartOn(ctx, root, dir, "")
}

// StartOn is Start on the given address of this machine ("": loopback), e.g. a real node's
// bridge address, which its pods reach.
func StartOn(ctx context.Context, root, dir, ip string) (*Server, error) {
	var env []string
	if ip != "" {
		env = []string{"SEAWEEDFS_IP=" + ip}
	}
	if out, err := run(ctx, root, env, "hack/seaweedfs-up.sh", dir); err != nil {
		return nil, fmt.Errorf("hack/seaweedfs-up.sh: %w\n%s", err, out)
	}
	s := &Server{root: root, Dir: dir}
	cfg, err := ReadConfig(filepath.Join(dir, "s3.env"))
	if err != nil {
		s.Stop()
		return nil, err
	}
	s.Config = cfg
	return s, nil
}

// EnvFile is the file of a server's folder that says how to reach it (hack/seaweedfs-up.sh).
func (s *Server) EnvFile() string { return filepath.Join(s.Dir, "s3.env") }

// ReadConfig reads how to reach a server from the s3.env hack/seaweedfs-up.sh wrote.
func ReadConfig(path string) (storage.S3Config, error) {
	env, err := readEnv(path)
	if err != nil {
		return storage.S3Config{}, err
	}
	return storage.S3Config{
		Endpoint:        env["S3_ENDPOINT"],
		Bucket:          env["S3_BUCKET"],
		Region:          env["S3_REGION"],
		PathStyle:       true,
		AccessKeyID:     env["S3_ACCESS_KEY_ID"],
		SecretAccessKey: env["S3_SECRET_ACCESS_KEY"],
	}, nil
}

// Stop stops the server; its folder stays.
func (s *Server) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := run(ctx, s.root, nil, "hack/seaweedfs-down.sh", s.Dir); err != nil {
		return fmt.Errorf("hack/seaweedfs-down.sh: %w\n%s", err, out)
	}
	return nil
}

// Log returns the last lines of the server's log, for test failures.
func (s *Server) Log(lines int) string {
	data, _ := os.ReadFile(filepath.Join(s.Dir, "weed.log"))
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}

func run(ctx context.Context, root string, env []string, script string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(root, script), args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func readEnv(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	for _, k := range []string{"S3_ENDPOINT", "S3_BUCKET", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"} {
		if env[k] == "" {
			return nil, fmt.Errorf("%s: no %s", path, k)
		}
	}
	return env, sc.Err()
}

// RepoRoot is the folder of the go.mod above the working directory that has hack/.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "hack", "seaweedfs-up.sh")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root (with hack/seaweedfs-up.sh) not found above the working directory")
		}
		dir = parent
	}
}
