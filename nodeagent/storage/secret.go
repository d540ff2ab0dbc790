package storage

import (
	"fmt"
	"strconv"
	"strings"
)

// Field names of the Secrets the agent reads (see docs/storage-tiers.md). The agent gets the
// Secrets with its client and passes their data here; the package never talks to the API.
const (
	// SecretKeyField holds a namespace's image key (32 bytes, raw, base64 or hex).
	SecretKeyField = "key"

	SecretEndpoint        = "endpoint"
	SecretBucket          = "bucket"
	SecretRegion          = "region"
	SecretPrefix          = "prefix"
	SecretPathStyle       = "pathStyle"
	SecretTLS             = "tls"
	SecretCABundle        = "caBundle"
	SecretAccessKeyID     = "accessKeyID"
	SecretSecretAccessKey = "secretAccessKey"
	SecretSessionToken    = "sessionToken"
)

// KeyFromSecret reads a namespace's image key from the data of its Secret.
func KeyFromSecret(data map[string][]byte) (Key, error) {
	raw, ok := data[SecretKeyField]
	if !ok {
		return Key{}, fmt.Errorf("image key Secret has no %q field", SecretKeyField)
	}
	return ParseKey(raw)
}

// S3ConfigFromSecret reads an object store's settings and credentials from the data of its
// Secret. pathStyle and tls are booleans ("true", "false"; tls defaults to true); errors
// never quote a credential.
func S3ConfigFromSecret(data map[string][]byte) (S3Config, error) {
	str := func(k string) string { return strings.TrimSpace(string(data[k])) }
	cfg := S3Config{
		Endpoint:        str(SecretEndpoint),
		Bucket:          str(SecretBucket),
		Region:          str(SecretRegion),
		Prefix:          str(SecretPrefix),
		CABundle:        data[SecretCABundle],
		AccessKeyID:     str(SecretAccessKeyID),
		SecretAccessKey: str(SecretSecretAccessKey),
		SessionToken:    str(SecretSessionToken),
		TLS:             true,
	}
	for field, dst := range map[string]*bool{SecretPathStyle: &cfg.PathStyle, SecretTLS: &cfg.TLS} {
		if v := str(field); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return S3Config{}, fmt.Errorf("object store Secret: %s %q is not a boolean", field, v)
			}
			*dst = b
		}
	}
	for field, v := range map[string]string{SecretEndpoint: cfg.Endpoint, SecretBucket: cfg.Bucket,
		SecretAccessKeyID: cfg.AccessKeyID, SecretSecretAccessKey: cfg.SecretAccessKey} {
		if v == "" {
			return S3Config{}, fmt.Errorf("object store Secret has no %q field", field)
		}
	}
	if cfg.Prefix != "" && !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	return cfg, nil
}
