// Package app is the kybernate-activator command: flags, wiring of the activator's controller
// and proxy, and the HTTP endpoints /metrics, /healthz and /readyz.
package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	_ "k8s.io/component-base/logs/json/register" // --logging-format=json
	"k8s.io/component-base/metrics/legacyregistry"
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // rest client metrics
	_ "k8s.io/component-base/metrics/prometheus/workqueue"
	"k8s.io/klog/v2"

	"github.com/kybernate/kybernate/activator"
	kscheme "github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned/scheme"
	"github.com/kybernate/kybernate/apis/kybernate/client/informers/externalversions"
	"github.com/kybernate/kybernate/internal/daemon"
)

// NewCommand returns the kybernate-activator command.
func NewCommand() *cobra.Command {
	o := NewOptions()
	return daemon.Command("kybernate-activator", "Kybernate activator: scale to zero for GPU inference Services",
		`kybernate-activator is a reverse proxy in front of Services whose pods opt into scale to zero
(kybernate.io/idle-after). It suspends pods that had no request for that long, holds the requests that
arrive while they sleep, asks the scheduler to resume them and forwards the held requests once a pod
is ready.`,
		o.Logs, o, func(ctx context.Context) error { return Run(ctx, o) })
}

// Run runs the activator until ctx ends.
func Run(ctx context.Context, o *Options) error {
	logger := klog.FromContext(ctx)
	activator.RegisterMetrics()
	kube, kyb, err := o.Clients("kybernate-activator")
	if err != nil {
		return err
	}

	factory := informers.NewSharedInformerFactory(kube, 0)
	kfactory := externalversions.NewSharedInformerFactory(kyb, 0)
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: kube.EventsV1()})
	defer broadcaster.Shutdown()
	// Events name GPUCheckpoints as related objects: the scheme knows both API groups.
	sch := runtime.NewScheme()
	if err := errors.Join(scheme.AddToScheme(sch), kscheme.AddToScheme(sch)); err != nil {
		return err
	}
	recorder := broadcaster.NewRecorder(sch, "kybernate-activator")
	ccfg := activator.Config{
		Limits:      activator.Limits{MaxHeld: o.MaxHeld, HoldTimeout: o.HoldTimeout},
		WakeTimeout: o.WakeTimeout, Interval: o.Interval, ClusterDomain: o.ClusterDomain,
	}
	if addr := o.SimulateBackendAddress; addr != "" {
		logger.Info("SIMULATION: every pod's requests go to one address, not to the pods", "address", addr)
		ccfg.Address = func(*v1.Pod, int) string { return addr }
	}
	ctrl, err := activator.NewController(ccfg, kube, kyb, factory.Core().V1().Services(), factory.Core().V1().Pods(),
		kfactory.Kybernate().V1alpha1().GPUCheckpoints(), recorder)
	if err != nil {
		return err
	}

	var ready atomic.Bool
	var servers daemon.Servers
	defer servers.Shutdown(ctx, 10*time.Second)
	if o.MetricsBindAddress != "" {
		if err := servers.Serve(ctx, o.MetricsBindAddress, "/metrics, /healthz and /readyz", opsHandler(&ready), nil); err != nil {
			return err
		}
	}

	broadcaster.StartRecordingToSink(ctx.Done())
	factory.Start(ctx.Done())
	kfactory.Start(ctx.Done())
	defer factory.Shutdown()
	defer kfactory.Shutdown()
	syncCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	synced := map[string]bool{}
	for t, ok := range factory.WaitForCacheSync(syncCtx.Done()) {
		synced[t.String()] = ok
	}
	for t, ok := range kfactory.WaitForCacheSync(syncCtx.Done()) {
		synced[t.String()] = ok
	}
	for t, ok := range synced {
		if !ok {
			return fmt.Errorf("informer for %s did not sync within a minute", t)
		}
	}
	go ctrl.Run(ctx, 4)

	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 256
	transport.ResponseHeaderTimeout = 0 // a model may think long before its first token
	if o.BackendH2C {
		transport.Protocols = new(http.Protocols)
		transport.Protocols.SetUnencryptedHTTP2(true)
	}
	if err := servers.Serve(ctx, o.BindAddress, "the proxy", activator.NewProxy(ctrl, transport, o.RetryAfter), ProxyProtocols()); err != nil {
		return err
	}
	ready.Store(true)

	<-ctx.Done()
	return nil
}

// ProxyProtocols are the protocols the proxy serves: HTTP/1.1 and HTTP/2 without TLS (prior
// knowledge, as gRPC and most HTTP/2 clients inside a cluster use it).
func ProxyProtocols() *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return p
}

func opsHandler(ready *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", legacyregistry.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "informers not synced yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	return mux
}
