// Command kybernate-extender is Kybernate's scheduler extender for a stock kube-scheduler.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // rest client metrics

	"github.com/kybernate/kybernate/scheduler/extender/app"
)

func main() {
	os.Exit(cli.Run(app.NewCommand()))
}
