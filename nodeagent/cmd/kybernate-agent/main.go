// Command kybernate-agent is Kybernate's node agent; see package app.
package main

import (
	"os"

	"k8s.io/component-base/cli"

	"github.com/kybernate/kybernate/nodeagent/app"
)

func main() {
	os.Exit(cli.Run(app.NewCommand()))
}
