package controllers

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/events"

	configscheme "github.com/kybernate/kybernate/apis/config/scheme"
	kfake "github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned/fake"
	"github.com/kybernate/kybernate/apis/kybernate/client/informers/externalversions"
)

func deps() Deps {
	client := fake.NewClientset()
	return Deps{
		Client:    client,
		Kybernate: kfake.NewSimpleClientset(),
		Informers: informers.NewSharedInformerFactory(client, 0),
		Recorder:  events.NewFakeRecorder(10),
		Identity:  "test",
	}
}

// Each controller is on or off by the configuration alone.
func TestNewEnabled(t *testing.T) {
	tests := []struct {
		name                               string
		resume, timeSlice, migrate, spread bool
		want                               []string
	}{
		{name: "defaults", want: []string{"resume", "timeslice", "migrate", "spread"}},
		{name: "no migration", migrate: true, want: []string{"resume", "timeslice", "spread"}},
		{name: "no spreading", spread: true, want: []string{"resume", "timeslice", "migrate"}},
		{name: "no resume: nothing would bring a spread pod back", resume: true, want: []string{"timeslice", "migrate"}},
		{name: "time slicing only", resume: true, migrate: true, want: []string{"timeslice"}},
		{name: "none", resume: true, timeSlice: true, migrate: true, spread: true, want: []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := configscheme.DefaultControllerConfiguration()
			cfg.DisableResume, cfg.DisableTimeSlicing, cfg.DisableMigration, cfg.DisableSpreading = tt.resume, tt.timeSlice, tt.migrate, tt.spread
			m, err := New(deps(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, m.Controllers()); diff != "" {
				t.Errorf("controllers (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNewInvalid(t *testing.T) {
	cfg := configscheme.DefaultControllerConfiguration()
	cfg.LeaderElection.ResourceNamespace = ""
	_, err := New(deps(), cfg)
	if err == nil || !strings.Contains(err.Error(), "leaderElection.resourceNamespace: Required value") {
		t.Errorf("New with no lease namespace: %v", err)
	}
}

// Given the program's kybernate.io informer factory (kybernate-scheduler shares one with its
// plugins), the controllers register their GPUNode and GPUCheckpoint informers on it and build
// no factory of their own.
func TestNewSharesKybernateInformers(t *testing.T) {
	d := deps()
	shared := externalversions.NewSharedInformerFactory(d.Kybernate, 0)
	d.KybernateInformers = shared
	m, err := New(d, configscheme.DefaultControllerConfiguration())
	if err != nil {
		t.Fatal(err)
	}
	if m.factory != shared {
		t.Error("the manager built an informer factory of its own")
	}
	shared.Start(t.Context().Done())
	var started []string
	for typ, synced := range shared.WaitForCacheSync(t.Context().Done()) {
		if synced {
			started = append(started, typ.Elem().Name())
		}
	}
	for _, want := range []string{"GPUNode", "GPUCheckpoint"} {
		if !strings.Contains(strings.Join(started, ","), want) {
			t.Errorf("informers started on the shared factory: %v, want %s among them", started, want)
		}
	}
}
