// Command kybernate-activator is Kybernate's scale-to-zero proxy; see package activator/app.
package main

import (
	"os"

	"k8s.io/component-base/cli"

	"github.com/kybernate/kybernate/activator/app"
)

func main() {
	os.Exit(cli.Run(app.NewCommand()))
}
