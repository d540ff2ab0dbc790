package podmap

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

const (
	uid         = types.UID("0d3f2c1e-5b7a-4c8e-9f21-3a6b7c8d9e0f")
	containerd  = "4a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef"
	dockerOrCRI = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0"
)

func TestParseCgroupFile(t *testing.T) {
	tests := []struct {
		file    string
		want    Container
		wantErr error
	}{
		{file: "v1-cgroupfs-containerd-burstable", want: Container{PodUID: uid, ID: containerd}},
		{file: "v1-cgroupfs-containerd-guaranteed", want: Container{PodUID: uid, ID: containerd}},
		{file: "v1-systemd-docker-besteffort", want: Container{PodUID: uid, ID: dockerOrCRI}},
		{file: "v1-host-process", wantErr: ErrNotInPod},
		{file: "v2-systemd-containerd-burstable", want: Container{PodUID: uid, ID: containerd}},
		{file: "v2-systemd-containerd-guaranteed", want: Container{PodUID: uid, ID: containerd}},
		{file: "v2-systemd-crio", want: Container{PodUID: uid, ID: dockerOrCRI}},
		// CRI-O's monitor runs in the pod but is no container.
		{file: "v2-systemd-crio-conmon", want: Container{PodUID: uid}},
		{file: "v2-cgroupfs-containerd", want: Container{PodUID: uid, ID: containerd}},
		{file: "v2-kind-nested", want: Container{PodUID: uid, ID: containerd}},
		{file: "v2-cgroup-namespace-relative", want: Container{PodUID: uid, ID: containerd}},
		{file: "v2-host-process", wantErr: ErrNotInPod},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			f, err := os.Open(filepath.Join("testdata", tt.file+".cgroup"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := ParseCgroupFile(f)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("container (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseCgroupFileMalformed(t *testing.T) {
	f, err := os.Open(filepath.Join("testdata", "malformed.cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = ParseCgroupFile(f)
	if err == nil || !strings.Contains(err.Error(), "malformed cgroup line") {
		t.Errorf("error %v, want a malformed line error", err)
	}
}

func TestParseCgroupPath(t *testing.T) {
	tests := []struct {
		path   string
		want   Container
		wantOK bool
	}{
		{path: "/kubepods/burstable/pod" + string(uid), want: Container{PodUID: uid}, wantOK: true},
		// Upper-case hex in a UID is normalised; a short container ID is not one.
		{path: "/kubepods/pod0D3F2C1E-5B7A-4C8E-9F21-3A6B7C8D9E0F/abc", want: Container{PodUID: uid}, wantOK: true},
		// A sub-cgroup inside the container keeps the container's ID.
		{path: "/kubepods/pod" + string(uid) + "/" + containerd + "/init", want: Container{PodUID: uid, ID: containerd}, wantOK: true},
		// Something merely named like a pod outside kubepods is not one.
		{path: "/system.slice/mypod" + string(uid) + ".slice", wantOK: false},
		{path: "/system.slice/foo-pod" + string(uid) + ".slice", wantOK: false},
		{path: "/kubepods/podnot-a-uid/" + containerd, wantOK: false},
		{path: "/", wantOK: false},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			got, ok := ParseCgroupPath(tt.path)
			if ok != tt.wantOK {
				t.Fatalf("ok %v, want %v", ok, tt.wantOK)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("container (-want +got):\n%s", diff)
			}
		})
	}
}

// procRoot lays out a fake /proc with the given cgroup fixtures per PID.
func procRoot(t *testing.T, files map[int32]string) string {
	t.Helper()
	root := t.TempDir()
	for pid, fixture := range files {
		b, err := os.ReadFile(filepath.Join("testdata", fixture+".cgroup"))
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(root, strconv.Itoa(int(pid)))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestResolverPodOfPID(t *testing.T) {
	pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "train", UID: uid}}
	informer := cache.NewSharedIndexInformer(&cache.ListWatch{}, &v1.Pod{}, 0, cache.Indexers{})
	if err := AddUIDIndex(informer); err != nil {
		t.Fatal(err)
	}
	indexer := informer.GetIndexer()
	if err := indexer.Add(pod); err != nil {
		t.Fatal(err)
	}
	other := PodRef{Namespace: "ml", Name: "from-containerd", UID: "11111111-2222-3333-4444-555555555555"}
	root := procRoot(t, map[int32]string{
		100: "v2-systemd-containerd-burstable",
		200: "v1-cgroupfs-containerd-guaranteed",
		300: "v2-host-process",
		400: "v2-systemd-crio",
		500: "v2-systemd-crio-conmon",
	})

	tests := []struct {
		name       string
		pid        int32
		containers ContainerLookup
		want       PodRef
		wantErr    error
	}{
		{name: "v2 systemd pod in the cache", pid: 100, want: PodRef{Namespace: "ml", Name: "train", UID: uid}},
		{name: "v1 cgroupfs pod in the cache", pid: 200, want: PodRef{Namespace: "ml", Name: "train", UID: uid}},
		{name: "host process", pid: 300, wantErr: ErrNotInPod},
		{name: "gone process", pid: 999, wantErr: os.ErrNotExist},
		{name: "pod not in the cache, asked containerd", pid: 400,
			containers: ContainerMap{dockerOrCRI: other}, want: other},
		{name: "pod not in the cache, containerd does not know it", pid: 400,
			containers: ContainerMap{}, wantErr: ErrUnknownPod},
		{name: "pod not in the cache, no container id", pid: 500,
			containers: ContainerMap{dockerOrCRI: other}, wantErr: ErrUnknownPod},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Resolver{ProcRoot: root, Containers: tt.containers}
			if tt.containers == nil {
				r.Pods = IndexedPods{Indexer: indexer}
			} else {
				// As if the informer had not seen the pod yet.
				r.Pods = IndexedPods{Indexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{UIDIndex: func(interface{}) ([]string, error) { return nil, nil }})}
			}
			got, err := r.PodOfPID(t.Context(), tt.pid)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("pod (-want +got):\n%s", diff)
			}
		})
	}
}
