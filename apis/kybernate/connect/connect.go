// Package connect connects processes to the kybernate.io API through the generated clientset
// and informers next to it: a client config that custom resources understand, and a bounded
// first sync of informers.
package connect

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"

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
