package shim

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/protobuf"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/shim/spec"
)

// inner is the runc task service: it records what reaches it.
type inner struct {
	taskAPI.TaskService
	created    *taskAPI.CreateTaskRequest
	checkpoint *taskAPI.CheckpointTaskRequest
}

func (i *inner) Create(_ context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	i.created = r
	return &taskAPI.CreateTaskResponse{Pid: 42}, nil
}

func (i *inner) Checkpoint(_ context.Context, r *taskAPI.CheckpointTaskRequest) (*ptypes.Empty, error) {
	i.checkpoint = r
	return &ptypes.Empty{}, nil
}

func bundle(t *testing.T, annotations map[string]string) (string, []byte) {
	t.Helper()
	dir := t.TempDir()
	data, err := json.Marshal(specs.Spec{Version: "1.1.0", Process: &specs.Process{Args: []string{"sleep"}}, Annotations: annotations})
	if err != nil {
		t.Fatal(err)
	}
	data = append(data, ' ') // a byte json.Marshal would not write: proves the file was not rewritten
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, data
}

func noConfig() (spec.Config, error) { return spec.Config{}, errors.New("settings must not be read") }

// Without kybernate.io/ annotations nothing is read or written: runc v2 gets the request as is.
func TestCreatePassthrough(t *testing.T) {
	dir, data := bundle(t, map[string]string{"io.kubernetes.cri.container-type": "container"})
	in := &inner{}
	s := New(in, noConfig, nil, nil)
	req := &taskAPI.CreateTaskRequest{ID: "c1", Bundle: dir}
	if _, err := s.Create(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if in.created != req || req.Checkpoint != "" || req.Options != nil {
		t.Errorf("request changed: %v", in.created)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	if string(got) != string(data) {
		t.Errorf("config.json rewritten:\n%s", got)
	}
}

// testImage writes an image of namespace ml into a checkpoint folder and returns the folder
// and the image.
func testImage(t *testing.T, m image.Metadata) (root, img string) {
	t.Helper()
	root = filepath.Join(t.TempDir(), "images")
	img = filepath.Join(root, "ml", "train-1")
	if err := os.MkdirAll(img, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(img, "inventory.img"), []byte("criu"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := image.Write(img, m); err != nil {
		t.Fatal(err)
	}
	return root, img
}

// configWith returns the default settings with checkpointDir root.
func configWith(root string) func() (spec.Config, error) {
	return func() (spec.Config, error) {
		c := spec.Default()
		c.CheckpointDir = root
		return c, nil
	}
}

// restoreOf are the annotations of a container of a pod in namespace ml restored from img.
func restoreOf(img string) map[string]string {
	return map[string]string{kv1.AnnotationRestoreFrom: img, criSandboxNamespace: "ml"}
}

func TestCreateRestore(t *testing.T) {
	root, img := testImage(t, image.Metadata{Container: image.Container{ID: "c0"}})
	dir, _ := bundle(t, restoreOf(img))
	in := &inner{}
	s := New(in, configWith(root), nil, nil)
	binary := protobuf.FromAny(mustAny(t, &options.Options{BinaryName: "runc"}))
	if _, err := s.Create(t.Context(), &taskAPI.CreateTaskRequest{ID: "c1", Bundle: dir, Options: binary}); err != nil {
		t.Fatal(err)
	}
	if in.created.Checkpoint != img {
		t.Errorf("checkpoint %q, want %q", in.created.Checkpoint, img)
	}
	v, err := typeurl.UnmarshalAny(in.created.Options)
	if err != nil {
		t.Fatal(err)
	}
	if o := v.(*options.Options); o.BinaryName != "runc" || o.CriuWorkPath != filepath.Join(dir, restoreWorkDir) {
		t.Errorf("options %v: want runc's binary kept and the work path in the bundle", o)
	}
	var sp specs.Spec
	data, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	if err := json.Unmarshal(data, &sp); err != nil {
		t.Fatal(err)
	}
	conf := sp.Annotations[spec.AnnotationCRIUConfig]
	if conf != filepath.Join(dir, restoreConfigFile) {
		t.Fatalf("annotation %s = %q", spec.AnnotationCRIUConfig, conf)
	}
	if data, err := os.ReadFile(conf); err != nil || !strings.Contains(string(data), "tcp-established\n") {
		t.Errorf("criu settings %q, %v", data, err)
	}
	if _, ok := s.restores["c1"]; !ok {
		t.Error("the container is not remembered as a restore")
	}
}

func TestCreateRefusesBadAnnotations(t *testing.T) {
	for name, tt := range map[string]struct {
		annotations map[string]string
		config      func() (spec.Config, error)
		wantMsg     string
	}{
		"bad gpu list":     {annotations: map[string]string{kv1.AnnotationGPUs: "0,1"}, wantMsg: `"0" is not a GPU UUID`},
		"broken settings":  {annotations: map[string]string{kv1.AnnotationGPUs: "0"}, config: noConfig, wantMsg: "settings must not be read"},
		"relative restore": {annotations: restoreOf("img"), wantMsg: "want an absolute path"},
	} {
		t.Run(name, func(t *testing.T) {
			dir, data := bundle(t, tt.annotations)
			in := &inner{}
			cfg := tt.config
			if cfg == nil {
				cfg = func() (spec.Config, error) { return spec.Default(), nil }
			}
			_, err := New(in, cfg, nil, nil).Create(t.Context(), &taskAPI.CreateTaskRequest{ID: "c1", Bundle: dir})
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %v, want one containing %q", err, tt.wantMsg)
			}
			if in.created != nil {
				t.Error("runc was asked to create the container")
			}
			if got, _ := os.ReadFile(filepath.Join(dir, "config.json")); string(got) != string(data) {
				t.Error("config.json changed")
			}
		})
	}
}

// A checkpoint goes into CheckpointOptions.ImagePath; containerd's own folder gets a marker
// that differs every time.
func TestCheckpointImagePath(t *testing.T) {
	in := &inner{}
	s := New(in, func() (spec.Config, error) { return spec.Default(), nil }, nil, nil)
	var markers []string
	for range 2 {
		daemonDir := t.TempDir()
		opts := protobuf.FromAny(mustAny(t, &options.CheckpointOptions{ImagePath: "/var/lib/kybernate/img"}))
		if _, err := s.Checkpoint(t.Context(), &taskAPI.CheckpointTaskRequest{ID: "c1", Path: daemonDir, Options: opts}); err != nil {
			t.Fatal(err)
		}
		if in.checkpoint.Path != "/var/lib/kybernate/img" {
			t.Errorf("path %q, want the image path", in.checkpoint.Path)
		}
		data, err := os.ReadFile(filepath.Join(daemonDir, redirectFile))
		if err != nil {
			t.Fatal(err)
		}
		markers = append(markers, string(data))
	}
	if markers[0] == markers[1] {
		t.Errorf("two checkpoints left the same marker %s", markers[0])
	}
	// Without an image path the request passes as it is.
	if _, err := s.Checkpoint(t.Context(), &taskAPI.CheckpointTaskRequest{ID: "c1", Path: "/tmp/ctrd-checkpoint1"}); err != nil {
		t.Fatal(err)
	}
	if in.checkpoint.Path != "/tmp/ctrd-checkpoint1" {
		t.Errorf("path %q", in.checkpoint.Path)
	}
	opts := protobuf.FromAny(mustAny(t, &options.CheckpointOptions{ImagePath: "img"}))
	if _, err := s.Checkpoint(t.Context(), &taskAPI.CheckpointTaskRequest{ID: "c1", Path: t.TempDir(), Options: opts}); err == nil {
		t.Error("relative image path: no error")
	}
}

func mustAny(t *testing.T, v any) typeurl.Any {
	t.Helper()
	a, err := typeurl.MarshalAny(v)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// kybernate.io/restore-from names only images of the pod's namespace under checkpointDir;
// anything else fails the container's creation with an error naming the reason (the kubelet
// reports it as an Event on the pod) before the image is read.
func TestCreateRefusesForeignImages(t *testing.T) {
	root, img := testImage(t, image.Metadata{Container: image.Container{ID: "c0"}})
	outside := filepath.Join(t.TempDir(), "img")
	other := filepath.Join(root, "other", "train-1")
	for _, d := range []string{outside, other} {
		if err := os.MkdirAll(filepath.Dir(d), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.CopyFS(d, os.DirFS(img)); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(root, "ml", "link")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		annotations map[string]string
		wantMsg     string
	}{
		{name: "absolute path elsewhere", annotations: restoreOf(outside), wantMsg: image.RefusedOutside},
		{name: "dot dot", annotations: restoreOf(root + "/ml/../other/train-1"), wantMsg: image.RefusedInvalidPath},
		{name: "dot dot out of the folder", annotations: restoreOf(root + "/ml/../../" + filepath.Base(outside)), wantMsg: image.RefusedInvalidPath},
		{name: "symbolic link", annotations: restoreOf(link), wantMsg: image.RefusedSymlink},
		{name: "other namespace", annotations: restoreOf(other), wantMsg: image.RefusedOtherNamespace},
		{name: "no pod namespace", annotations: map[string]string{kv1.AnnotationRestoreFrom: img}, wantMsg: "namespace is not known"},
		{name: "missing image", annotations: restoreOf(filepath.Join(root, "ml", "gone")), wantMsg: "no such folder"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, _ := bundle(t, tt.annotations)
			in := &inner{}
			_, err := New(in, configWith(root), nil, nil).Create(t.Context(), &taskAPI.CreateTaskRequest{ID: "c1", Bundle: dir})
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantMsg)
			}
			if in.created != nil {
				t.Error("runc was asked to create the container")
			}
		})
	}
}
