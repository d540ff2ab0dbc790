package tier

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/metrics"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

// Fetched is an image Fetch decrypted for the shim.
type Fetched struct {
	// Dir is the decrypted image; empty when the pod has no spilled image of the container.
	Dir   string
	Tier  kv1.StorageTier
	Steps []engine.Step
}

// Fetch brings the spilled image of pod's container back for a restore: from object storage
// to disk when it is there, then checked (manifest MAC, every chunk, every file's SHA-256) and
// decrypted into SpilledDir. A pod with no image, or with the image of another container, gets
// an empty Fetched. On failure the stored image is kept where it was.
func (c *Containers) Fetch(ctx context.Context, pod PodRef) (Fetched, error) {
	if pod.Namespace == "" || pod.Name == "" || pod.UID == "" || pod.Container == "" {
		return Fetched{}, cfail(ContainerInvalid, "pod namespace, name, uid and container are required")
	}
	id := ImageOf(pod.Namespace, pod.Name, pod.UID)
	if err := id.Validate(); err != nil {
		return Fetched{}, cfail(ContainerInvalid, "%w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	from, err := c.where(ctx, id)
	if err != nil || from == "" {
		return Fetched{}, err
	}
	if c.Gate != nil {
		if err := c.Gate.Admit(ctx, pod); err != nil {
			return Fetched{}, err
		}
	}
	unlock, err := c.lock(id)
	if err != nil {
		return Fetched{}, err
	}
	defer unlock()
	start := time.Now()
	var out Fetched
	out.Tier = from
	if from == kv1.TierObjectStore {
		_, err := storage.Copy(ctx, c.Objects, c.Disk, id)
		if err != nil && !errors.Is(err, storage.ErrExists) {
			return Fetched{}, c.fetchFailed(from, fmt.Errorf("fetching the image from object storage: %w", err))
		}
		out.Steps = append(out.Steps, engine.Step{Name: StepFetch, Duration: time.Since(start)})
	}
	key, err := c.Keys.Key(ctx, pod.Namespace)
	if err != nil {
		return Fetched{}, cfail(ContainerNoKey, "%w", err)
	}
	dir, err := c.SpilledDir(pod)
	if err != nil {
		return Fetched{}, cfail(ContainerStore, "%w", err)
	}
	if err := os.RemoveAll(dir); err != nil { // left by an earlier attempt that did not finish
		return Fetched{}, cfail(ContainerStore, "%w", err)
	}
	t := time.Now()
	man, err := storage.Restore(ctx, c.Disk, id, key, dir)
	if err != nil {
		return Fetched{}, c.fetchFailed(from, fmt.Errorf("verifying and decrypting the image: %w", err))
	}
	out.Steps = append(out.Steps, engine.Step{Name: StepDecrypt, Duration: time.Since(t), Bytes: man.Size()})
	// storage.Restore checked every file's SHA-256 against the image's authenticated manifest
	// as it decrypted it: hashing the folder again would only cost time.
	m, err := image.Check(dir)
	if err != nil {
		os.RemoveAll(dir)
		return Fetched{}, c.fetchFailed(from, fmt.Errorf("the decrypted image: %w: %w", err, storage.ErrCorrupt))
	}
	if m.Container.Name != pod.Container {
		// The image of another container of the pod: this one starts fresh.
		os.RemoveAll(dir)
		return Fetched{}, nil
	}
	out.Dir = dir
	klog.FromContext(ctx).V(2).Info("Fetched spilled image for a restore", "pod", klog.KRef(pod.Namespace, pod.Name), "container", pod.Container,
		"tier", from, "image", id.String(), "dir", dir, "bytes", man.Size(), "duration", time.Since(start))
	return out, nil
}

// where is the tier holding the pod's complete image, "" when none does. Only the node's own
// disk is read: the object store is asked only for an image this node moved there (its
// mark), so that an unreachable object store does not hold up the creation of every other
// container.
func (c *Containers) where(ctx context.Context, id storage.ImageID) (kv1.StorageTier, error) {
	ok, err := storage.Exists(ctx, c.Disk, id)
	if err != nil {
		return "", c.fetchFailed(kv1.TierDisk, fmt.Errorf("looking for the image of the pod: %w", err))
	}
	if ok {
		return kv1.TierDisk, nil
	}
	if _, err := os.Stat(c.uploadedMark(id)); errors.Is(err, os.ErrNotExist) {
		return "", nil
	} else if err != nil {
		return "", c.fetchFailed(kv1.TierDisk, err)
	}
	if c.Objects == nil {
		return "", c.fetchFailed(kv1.TierObjectStore, fmt.Errorf("image %s was moved to an object store (%s), but the agent has none (--object-store-secret)", id, c.uploadedMark(id)))
	}
	if ok, err := storage.Exists(ctx, c.Objects, id); err != nil {
		return "", c.fetchFailed(kv1.TierObjectStore, fmt.Errorf("looking for the image of the pod: %w", err))
	} else if !ok {
		return "", c.fetchFailed(kv1.TierObjectStore, fmt.Errorf("image %s was moved to %s, but it is not there: the pod's memory is lost; delete %s to let the container start afresh",
			id, c.Objects, c.uploadedMark(id)))
	}
	return kv1.TierObjectStore, nil
}

// Marks of the images this node moved to the object store, under DiskDir.
const dirUploaded = "uploaded"

func (c *Containers) uploadedMark(id storage.ImageID) string {
	return filepath.Join(c.DiskDir, dirUploaded, id.Namespace, id.Name)
}

// markUploaded records, durably, that the image is in the object store.
func (c *Containers) markUploaded(id storage.ImageID) error {
	p := c.uploadedMark(id)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(c.location(kv1.TierObjectStore, id) + "\n")
	return errors.Join(werr, f.Sync(), f.Close())
}

func (c *Containers) fetchFailed(from kv1.StorageTier, err error) error {
	cause := readCause(err)
	metrics.TierMoveFailures.WithLabelValues(string(from), metrics.TierGPU, string(cause)).Inc()
	return &ContainerError{Cause: cause, Err: fmt.Errorf("%w; the image is kept in %s", err, from)}
}

// Release ends a restore Fetch prepared: the decrypted folder dir is deleted and, when the
// container was restored from it, the pod's stored images.
func (c *Containers) Release(ctx context.Context, pod PodRef, dir string, restored bool) error {
	want, err := c.SpilledDir(pod)
	if err != nil {
		return cfail(ContainerInvalid, "%w", err)
	}
	if dir != want {
		return cfail(ContainerInvalid, "image folder %q is not the spilled image of pod %s/%s (%s)", dir, pod.Namespace, pod.Name, want)
	}
	id := ImageOf(pod.Namespace, pod.Name, pod.UID)
	unlock, err := c.lock(id)
	if err != nil {
		return err
	}
	defer unlock()
	errs := []error{os.RemoveAll(dir)}
	if restored {
		errs = append(errs, storage.Delete(ctx, c.Disk, id))
		if c.Objects != nil {
			errs = append(errs, storage.Delete(ctx, c.Objects, id))
		}
		if err := os.Remove(c.uploadedMark(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		klog.FromContext(ctx).V(2).Info("Container restored from its spilled image; the image is deleted", "pod", klog.KRef(pod.Namespace, pod.Name), "image", id.String())
	}
	if c.Gate != nil {
		c.Gate.Restored(pod, restored)
	}
	if err := errors.Join(errs...); err != nil {
		return cfail(ContainerStore, "%w", err)
	}
	return nil
}

// SpilledDir is where Fetch decrypts the image for the pod's container: in its namespace's
// folder under the checkpoint folder, where the shim restores from.
func (c *Containers) SpilledDir(pod PodRef) (string, error) {
	if c.ImageRoot == "" {
		return "", errors.New("no checkpoint folder (--checkpoint-dir): the shim restores only from images under it")
	}
	id := ImageOf(pod.Namespace, pod.Name, pod.UID)
	if err := id.Validate(); err != nil {
		return "", err
	}
	ns, err := image.NamespaceDir(c.ImageRoot, pod.Namespace)
	if err != nil {
		return "", err
	}
	if errs := validation.IsDNS1123Label(pod.Container); len(errs) > 0 {
		return "", fmt.Errorf("container name %q: %s", pod.Container, strings.Join(errs, "; "))
	}
	// Per container: a restore of one does not touch the folder of another being restored.
	return filepath.Join(ns, "spilled-"+id.Name+"-"+pod.Container), nil
}
