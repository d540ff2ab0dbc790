// Command kybernate-scheduler is kube-scheduler with Kybernate's plugins registered.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // rest client metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
	"sigs.k8s.io/scheduler-plugins/pkg/coscheduling"

	_ "github.com/kybernate/kybernate/apis/config/scheme" // our plugin args in the scheduler's scheme
	"github.com/kybernate/kybernate/plugins/gpushare"
)

func main() {
	command := app.NewSchedulerCommand(
		app.WithPlugin(gpushare.Name, gpushare.New),
		app.WithPlugin(coscheduling.Name, coscheduling.New),
	)
	os.Exit(cli.Run(command))
}
