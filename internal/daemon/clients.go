package daemon

import (
	"fmt"

	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
)

// Client are the flags every daemon has for its API server connection; a daemon's Options
// embed it.
type Client struct {
	// Kubeconfig is a kubeconfig file; empty for the in-cluster configuration.
	Kubeconfig string
	KubeAPIQPS float32
	KubeBurst  int
}

// DefaultClient is 50 queries per second, bursts of 100, in-cluster.
func DefaultClient() Client { return Client{KubeAPIQPS: 50, KubeBurst: 100} }

// AddFlags adds --kubeconfig, --kube-api-qps and --kube-api-burst to fs.
func (c *Client) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "Path to a kubeconfig; in-cluster configuration when empty.")
	fs.Float32Var(&c.KubeAPIQPS, "kube-api-qps", c.KubeAPIQPS, "Queries per second to the API server.")
	fs.IntVar(&c.KubeBurst, "kube-api-burst", c.KubeBurst, "Burst of queries to the API server.")
}

// Clients returns the Kubernetes and kybernate.io clients of the daemon called userAgent.
func (c Client) Clients(userAgent string) (kubernetes.Interface, versioned.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return nil, nil, fmt.Errorf("loading kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst = c.KubeAPIQPS, c.KubeBurst
	cfg = rest.AddUserAgent(cfg, userAgent)
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("creating kubernetes client: %w", err)
	}
	kyb, err := versioned.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("creating kybernate client: %w", err)
	}
	return kube, kyb, nil
}
