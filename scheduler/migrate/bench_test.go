package migrate

import (
	"fmt"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"

	"github.com/kybernate/kybernate/apis/config"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/internal/controllertest"
)

// BenchmarkScan is the scan that every GPU change of a pod queues, in a cluster of the
// scheduler benchmark's size: 6000 running GPU pods, none suspended.
func BenchmarkScan(b *testing.B) {
	var pods []*v1.Pod
	for i := range 6000 {
		pods = append(pods, gpuPod(fmt.Sprintf("p%d", i), fmt.Sprintf("n%d", i%1000), kv1.PodRunning))
	}
	env := controllertest.New(nil)
	c, err := New(env.Client, env.Kybernate, env.Pods, env.Nodes, env.GPUNodes, env.Checkpoints, events.NewFakeRecorder(100),
		config.ControllerConfiguration{MigrationMinWait: metav1.Duration{Duration: 30 * time.Second}, MigrationBytesPerSecond: 1 << 30}, gpupod.NewLedger())
	if err != nil {
		b.Fatal(err)
	}
	env.Fill(b, pods, nil, nil, nil)
	b.ReportAllocs()
	for b.Loop() {
		if err := c.scan(b.Context()); err != nil {
			b.Fatal(err)
		}
	}
}
