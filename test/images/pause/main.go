// Command pause is the sandbox container of the real test node (hack/node-up.sh): it holds a
// pod's namespaces, reaps the orphans it inherits as PID 1 and exits on SIGINT or SIGTERM. It
// stands in for registry.k8s.io/pause, which cannot be pulled where the tests run;
// hack/images.sh builds it into an image by hand.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every child that has exited, so that none stays a zombie.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
