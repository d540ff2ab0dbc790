// Command kubectl-kybernate is the kubectl plugin of Kybernate (kubectl kybernate ...); see
// package cli.
package main

import (
	"fmt"
	"os"

	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/component-base/logs"

	"github.com/kybernate/kybernate/cli"
)

func main() {
	os.Exit(run())
}

func run() int {
	defer logs.FlushLogs()
	cmd := cli.NewCommand(genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	if err := cmd.Execute(); err != nil {
		// kubectl's way: errors are output for the user, not log lines.
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	return 0
}
