// Command kybernate-scheduler is kube-scheduler with Kybernate's plugins registered.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // rest client metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric

	"github.com/kybernate/kybernate/scheduler/app"
)

func main() {
	os.Exit(cli.Run(app.NewCommand()))
}
