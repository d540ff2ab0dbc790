package framework

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LabelTest is set on every namespace CreateNamespace makes, to the test's name.
const LabelTest = "kybernate.io/test"

var notDNSLabel = regexp.MustCompile(`[^a-z0-9-]+`)

// CreateNamespace creates a namespace for the test, named after it, and deletes it
// when the test ends: the cleanup waits until the namespace's pods are gone, so
// the GPUs and pod slots they held on the shared nodes are free for the next test.
// It returns once the namespace can take pods (its default ServiceAccount exists;
// before that the ServiceAccount admission plugin refuses pods).
func (c *Cluster) CreateNamespace(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	prefix := strings.Trim(notDNSLabel.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(prefix) > 40 {
		prefix = strings.TrimRight(prefix[:40], "-")
	}
	ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: prefix + "-",
			Labels:       map[string]string{LabelTest: prefix},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace for %s: %v", t.Name(), err)
	}
	name := ns.Name
	t.Cleanup(func() { c.deleteNamespace(t, name) })

	WaitFor(ctx, t, 30*time.Second, fmt.Sprintf("default ServiceAccount in namespace %s", name), func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
	return name
}

func (c *Cluster) deleteNamespace(t testing.TB, name string) {
	t.Helper()
	// The test's context is done by now.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The namespace controller waits 5 s before it empties a deleted namespace;
	// deleting the pods first frees their nodes at once (kwok finishes the
	// graceful deletion right away).
	err := c.Client.CoreV1().Pods(name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete pods of namespace %s: %v", name, err)
	}
	err = c.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return
	}
	if err != nil {
		t.Errorf("delete namespace %s: %v", name, err)
		return
	}
	var left int
	err = Poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
		pods, err := c.Client.CoreV1().Pods(name).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		left = len(pods.Items)
		return left == 0, nil
	})
	if err != nil {
		t.Errorf("pods of deleted namespace %s still there (%d): %v", name, left, err)
	}
}
