package tier

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kybernate/kybernate/nodeagent/storage"
)

// SecretKeys reads a namespace's image key from the Secret Name in that namespace (data key
// "key": 32 bytes, raw, base64 or hex). Errors name the Secret, never the key.
type SecretKeys struct {
	Client kubernetes.Interface
	Name   string
}

// Key returns the image key of namespace.
func (k SecretKeys) Key(ctx context.Context, namespace string) (storage.Key, error) {
	s, err := k.Client.CoreV1().Secrets(namespace).Get(ctx, k.Name, metav1.GetOptions{})
	if err != nil {
		return storage.Key{}, fmt.Errorf("image key of namespace %s: Secret %s: %w", namespace, k.Name, err)
	}
	key, err := storage.KeyFromSecret(s.Data)
	if err != nil {
		return storage.Key{}, fmt.Errorf("image key of namespace %s: Secret %s: %w", namespace, k.Name, err)
	}
	return key, nil
}
