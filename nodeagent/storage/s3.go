package storage

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Config is an S3-compatible endpoint. The agent reads the credentials from a Kubernetes
// Secret and passes them here as values; String never prints them.
type S3Config struct {
	// Endpoint is host[:port], without a scheme.
	Endpoint string
	Bucket   string
	// Region is the bucket's region; empty lets the client ask the server.
	Region string
	// Prefix is put before every key (e.g. "kybernate/"); empty for none.
	Prefix string
	// PathStyle addresses the bucket in the path (http://host/bucket/key) rather than in the
	// host name; most S3-compatible servers other than AWS want it.
	PathStyle bool
	// TLS uses https; CABundle (PEM), when set, replaces the system roots.
	TLS      bool
	CABundle []byte

	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string

	// PartSize is the multipart part size in bytes (default 16 MiB, at least 5 MiB); an
	// upload holds one part in memory.
	PartSize uint64
	// MaxRetries is how often one request is tried (default 5); the client backs off
	// between tries.
	MaxRetries int
}

// DefaultPartSize is the multipart part size when S3Config.PartSize is 0.
const DefaultPartSize = 16 << 20

// S3 is the object-storage tier.
type S3 struct {
	cfg    S3Config
	client *minio.Client
}

var (
	_ Tier          = (*S3)(nil)
	_ UploadAborter = (*S3)(nil)
)

// metaSHA256 is the user metadata that carries an object's SHA-256 (x-amz-meta-kybernate-sha256).
const metaSHA256 = "Kybernate-Sha256"

// NewS3 returns the tier for cfg. It does not contact the server.
func NewS3(cfg S3Config) (*S3, error) {
	if cfg.Endpoint == "" || strings.Contains(cfg.Endpoint, "://") {
		return nil, fmt.Errorf("s3 tier: endpoint %q: want host[:port] without a scheme", cfg.Endpoint)
	}
	if cfg.Bucket == "" {
		return nil, errors.New("s3 tier: no bucket")
	}
	if cfg.AccessKeyID == "" || cfg.SecretAccessKey == "" {
		return nil, errors.New("s3 tier: no credentials (access key id and secret access key)")
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = DefaultPartSize
	}
	if cfg.PartSize < 5<<20 {
		return nil, fmt.Errorf("s3 tier: part size %d below the S3 minimum of 5 MiB", cfg.PartSize)
	}
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = 5
	}
	transport, err := minio.DefaultTransport(cfg.TLS)
	if err != nil {
		return nil, err
	}
	if len(cfg.CABundle) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(cfg.CABundle) {
			return nil, errors.New("s3 tier: CA bundle holds no PEM certificate")
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken),
		Secure:       cfg.TLS,
		Region:       cfg.Region,
		BucketLookup: lookup,
		Transport:    transport,
		MaxRetries:   cfg.MaxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 tier: %w", err)
	}
	return &S3{cfg: cfg, client: client}, nil
}

func (s *S3) String() string {
	scheme := "http"
	if s.cfg.TLS {
		scheme = "https"
	}
	return fmt.Sprintf("s3 %s://%s/%s/%s", scheme, s.cfg.Endpoint, s.cfg.Bucket, s.cfg.Prefix)
}

// EnsureBucket creates the bucket when it does not exist.
func (s *S3) EnsureBucket(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.cfg.Bucket)
	if err != nil {
		return fmt.Errorf("%s: %w", s, err)
	}
	if ok {
		return nil
	}
	if err := s.client.MakeBucket(ctx, s.cfg.Bucket, minio.MakeBucketOptions{Region: s.cfg.Region}); err != nil {
		return fmt.Errorf("%s: creating the bucket: %w", s, err)
	}
	return nil
}

// Put uploads in parts of PartSize, each retried by the client. An upload that fails is
// aborted; one whose process died is left to the server's lifecycle rules and is never an
// object, so readers cannot see it.
func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64, storedSHA256 string) error {
	opts := minio.PutObjectOptions{ContentType: "application/octet-stream", PartSize: s.cfg.PartSize}
	if storedSHA256 != "" {
		opts.UserMetadata = map[string]string{metaSHA256: storedSHA256}
	}
	info, err := s.client.PutObject(ctx, s.cfg.Bucket, s.cfg.Prefix+key, ctxReader{ctx: ctx, r: r}, size, opts)
	if err != nil {
		return fmt.Errorf("%s: uploading %s: %w", s, key, err)
	}
	if info.Size != size {
		return fmt.Errorf("%s: uploading %s: server stored %d bytes, want %d", s, key, info.Size, size)
	}
	return nil
}

func (s *S3) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	obj, err := s.client.GetObject(ctx, s.cfg.Bucket, s.cfg.Prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, s.wrap("downloading", key, err)
	}
	// GetObject is lazy; Stat makes a missing object an error here rather than at Read.
	if _, err := obj.Stat(); err != nil {
		obj.Close()
		return nil, s.wrap("downloading", key, err)
	}
	return obj, nil
}

func (s *S3) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	info, err := s.client.StatObject(ctx, s.cfg.Bucket, s.cfg.Prefix+key, minio.StatObjectOptions{})
	if err != nil {
		return ObjectInfo{}, s.wrap("stat", key, err)
	}
	return ObjectInfo{Size: info.Size, SHA256: info.UserMetadata[metaSHA256]}, nil
}

func (s *S3) Delete(ctx context.Context, key string) error {
	if err := s.client.RemoveObject(ctx, s.cfg.Bucket, s.cfg.Prefix+key, minio.RemoveObjectOptions{}); err != nil {
		return s.wrap("deleting", key, err)
	}
	return nil
}

func (s *S3) List(ctx context.Context, prefix string) ([]string, error) {
	var keys []string
	for obj := range s.client.ListObjects(ctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: s.cfg.Prefix + prefix, Recursive: true}) {
		if obj.Err != nil {
			return nil, fmt.Errorf("%s: listing %s: %w", s, prefix, obj.Err)
		}
		keys = append(keys, strings.TrimPrefix(obj.Key, s.cfg.Prefix))
	}
	return keys, nil
}

// AbortUploads aborts the unfinished multipart uploads under prefix (those of a process that
// died mid-upload), so that their parts stop taking space.
func (s *S3) AbortUploads(ctx context.Context, prefix string) error {
	for up := range s.client.ListIncompleteUploads(ctx, s.cfg.Bucket, s.cfg.Prefix+prefix, true) {
		if up.Err != nil {
			return fmt.Errorf("%s: listing unfinished uploads: %w", s, up.Err)
		}
		if err := s.client.RemoveIncompleteUpload(ctx, s.cfg.Bucket, up.Key); err != nil {
			return fmt.Errorf("%s: aborting the upload of %s: %w", s, up.Key, err)
		}
	}
	return nil
}

func (s *S3) wrap(op, key string, err error) error {
	resp := minio.ToErrorResponse(err)
	// A missing bucket is a configuration error, not a missing image.
	if resp.Code == minio.NoSuchKey {
		return fmt.Errorf("%s: %s %s: %w", s, op, key, ErrObjectNotFound)
	}
	return fmt.Errorf("%s: %s %s: %w", s, op, key, err)
}
