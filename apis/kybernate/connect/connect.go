// Package connect connects processes to the kybernate.io API through the generated clientset
// and informers next to it: a client config that custom resources understand, a bounded
// first sync of informers, and one client and informer factory a program's parts share.
package connect

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	"github.com/kybernate/kybernate/apis/kybernate/client/informers/externalversions"
)

// informerSyncTimeout bounds the wait for the first list of GPUNodes and GPUCheckpoints.
const informerSyncTimeout = time.Minute

// StartInformers starts the factory's informers and waits, a minute at most, for their first
// list: a scheduler that cannot see the GPUs must not start placing pods.
func StartInformers(ctx context.Context, factory externalversions.SharedInformerFactory) error {
	factory.Start(ctx.Done())
	syncCtx, cancel := context.WithTimeout(ctx, informerSyncTimeout)
	defer cancel()
	for typ, synced := range factory.WaitForCacheSync(syncCtx.Done()) {
		if !synced {
			return fmt.Errorf("listing %v timed out after %v: are the CRDs of manifests/crds installed, and may the scheduler list kybernate.io objects?", typ, informerSyncTimeout)
		}
	}
	return nil
}

// CRDConfig returns a copy of a client config that talks JSON: kube-scheduler asks for
// protobuf, which custom resources do not speak.
func CRDConfig(c *rest.Config) *rest.Config {
	c = rest.CopyConfig(c)
	c.ContentType = runtime.ContentTypeJSON
	c.AcceptContentTypes = runtime.ContentTypeJSON
	return c
}

// Shared is one kybernate.io client and informer factory that the plugins and the controllers
// of a program share, so that each kind is watched and cached once per process. It is built on
// first use, from the client config of the first caller (every caller of one program passes
// the same: kube-scheduler's); the program starts it (StartInformers; a second Start is
// harmless, and starts informers registered since).
type Shared struct {
	once    sync.Once
	client  versioned.Interface
	factory externalversions.SharedInformerFactory
	err     error
}

// Get returns the shared client and informer factory, building them from c (through
// CRDConfig) on the first call.
func (s *Shared) Get(c *rest.Config) (versioned.Interface, externalversions.SharedInformerFactory, error) {
	s.once.Do(func() {
		s.client, s.err = versioned.NewForConfig(CRDConfig(c))
		if s.err != nil {
			s.err = fmt.Errorf("creating kybernate client: %w", s.err)
			return
		}
		s.factory = externalversions.NewSharedInformerFactory(s.client, 0)
	})
	return s.client, s.factory, s.err
}
