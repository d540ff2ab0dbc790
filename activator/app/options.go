package app

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spf13/pflag"
	logsapi "k8s.io/component-base/logs/api/v1"

	"github.com/kybernate/kybernate/internal/daemon"
)

// Options are the activator's flags.
type Options struct {
	daemon.Client

	BindAddress        string
	MetricsBindAddress string
	BackendH2C         bool

	MaxHeld       int
	HoldTimeout   time.Duration
	WakeTimeout   time.Duration
	RetryAfter    time.Duration
	Interval      time.Duration
	ClusterDomain string

	// SimulateBackendAddress sends every pod's requests to one address: for clusters of kwok
	// nodes, whose pods run no process. Never for real pods.
	SimulateBackendAddress string

	Logs *logsapi.LoggingConfiguration
}

// NewOptions returns the defaults.
func NewOptions() *Options {
	return &Options{
		Client:             daemon.DefaultClient(),
		BindAddress:        ":8080",
		MetricsBindAddress: ":9465",
		MaxHeld:            1000,
		HoldTimeout:        2 * time.Minute,
		WakeTimeout:        5 * time.Minute,
		RetryAfter:         5 * time.Second,
		Interval:           time.Second,
		ClusterDomain:      "cluster.local",
		Logs:               logsapi.NewLoggingConfiguration(),
	}
}

// AddFlags adds the flags to fs.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	o.Client.AddFlags(fs)
	fs.StringVar(&o.BindAddress, "bind-address", o.BindAddress, "Address the proxy serves requests on (HTTP/1.1 and HTTP/2 without TLS, prior knowledge).")
	fs.StringVar(&o.MetricsBindAddress, "metrics-bind-address", o.MetricsBindAddress, "Address of /metrics, /healthz and /readyz.")
	fs.BoolVar(&o.BackendH2C, "backend-h2c", o.BackendH2C, "Speak HTTP/2 without TLS (prior knowledge) to the pods instead of HTTP/1.1.")
	fs.IntVar(&o.MaxHeld, "max-held-requests", o.MaxHeld, "Most requests held per Service while its pods sleep; one more is answered 503.")
	fs.DurationVar(&o.HoldTimeout, "hold-timeout", o.HoldTimeout, "Longest a request is held before it is answered 503.")
	fs.DurationVar(&o.WakeTimeout, "wake-timeout", o.WakeTimeout, "Longest a wake may take before the held requests are answered 503 and the pod gets a WakeFailed Event.")
	fs.DurationVar(&o.RetryAfter, "retry-after", o.RetryAfter, "Retry-After of 503 answers (whole seconds).")
	fs.DurationVar(&o.Interval, "interval", o.Interval, "How often every Service is checked for idle pods and wake timeouts.")
	fs.StringVar(&o.ClusterDomain, "cluster-domain", o.ClusterDomain, "The cluster's DNS domain, for Host headers <service>.<namespace>.svc.<domain>.")
	fs.StringVar(&o.SimulateBackendAddress, "simulate-backend-address", o.SimulateBackendAddress,
		"Simulation only: send every pod's requests to this host:port instead of the pod's IP (kwok nodes, whose pods run no process).")
	logsapi.AddFlags(o.Logs, fs)
}

// Validate checks the options.
func (o *Options) Validate() error {
	var errs []error
	if o.MaxHeld < 1 {
		errs = append(errs, fmt.Errorf("--max-held-requests must be at least 1, not %d", o.MaxHeld))
	}
	for name, d := range map[string]time.Duration{"--hold-timeout": o.HoldTimeout, "--wake-timeout": o.WakeTimeout, "--retry-after": o.RetryAfter, "--interval": o.Interval} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, not %s", name, d))
		}
	}
	if o.BindAddress == "" {
		errs = append(errs, errors.New("--bind-address must not be empty"))
	}
	if o.SimulateBackendAddress != "" {
		if _, _, err := net.SplitHostPort(o.SimulateBackendAddress); err != nil {
			errs = append(errs, fmt.Errorf("--simulate-backend-address %q is not host:port: %w", o.SimulateBackendAddress, err))
		}
	}
	return errors.Join(errs...)
}
