// Package controllertest builds what the unit tests of kybernate-scheduler's controllers share:
// fake clientsets, and informers whose caches a test fills by hand (nothing is started).
package controllertest

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes/fake"

	kfake "github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned/fake"
	"github.com/kybernate/kybernate/apis/kybernate/client/informers/externalversions"
	kinformers "github.com/kybernate/kybernate/apis/kybernate/client/informers/externalversions/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// Env is a fake cluster for one controller test.
type Env struct {
	Client      *fake.Clientset
	Kybernate   *kfake.Clientset
	Pods        coreinformers.PodInformer
	Nodes       coreinformers.NodeInformer
	GPUNodes    kinformers.GPUNodeInformer
	Checkpoints kinformers.GPUCheckpointInformer
}

// New returns an Env whose core clientset holds the pods (patches to them succeed).
func New(pods []*v1.Pod) *Env {
	objs := make([]runtime.Object, len(pods))
	for i, p := range pods {
		objs[i] = p
	}
	e := &Env{Client: fake.NewClientset(objs...), Kybernate: kfake.NewSimpleClientset()}
	factory := informers.NewSharedInformerFactory(e.Client, 0)
	kfactory := externalversions.NewSharedInformerFactory(e.Kybernate, 0)
	e.Pods, e.Nodes = factory.Core().V1().Pods(), factory.Core().V1().Nodes()
	e.GPUNodes, e.Checkpoints = kfactory.Kybernate().V1alpha1().GPUNodes(), kfactory.Kybernate().V1alpha1().GPUCheckpoints()
	return e
}

// Fill puts objects into the informers' caches; call it after the controller under test has
// added its indexes.
func (e *Env) Fill(t testing.TB, pods []*v1.Pod, nodes []*v1.Node, gpuNodes []*kv1.GPUNode, cks []*kv1.GPUCheckpoint) {
	t.Helper()
	add := func(indexer interface{ Add(interface{}) error }, obj interface{}) {
		if err := indexer.Add(obj); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range pods {
		add(e.Pods.Informer().GetIndexer(), p)
	}
	for _, n := range nodes {
		add(e.Nodes.Informer().GetIndexer(), n)
	}
	for _, gn := range gpuNodes {
		add(e.GPUNodes.Informer().GetIndexer(), gn)
	}
	for _, ck := range cks {
		add(e.Checkpoints.Informer().GetIndexer(), ck)
	}
}
