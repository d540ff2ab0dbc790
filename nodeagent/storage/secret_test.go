package storage

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestS3ConfigFromSecret(t *testing.T) {
	full := map[string][]byte{
		"endpoint": []byte("s3.example.internal:9000"), "bucket": []byte("ckpt"), "region": []byte("eu-1"),
		"prefix": []byte("kybernate"), "pathStyle": []byte("true"), "tls": []byte("false"),
		"accessKeyID": []byte("AKID"), "secretAccessKey": []byte("s3cr3t-value\n"),
	}
	got, err := S3ConfigFromSecret(full)
	if err != nil {
		t.Fatal(err)
	}
	want := S3Config{Endpoint: "s3.example.internal:9000", Bucket: "ckpt", Region: "eu-1", Prefix: "kybernate/",
		PathStyle: true, TLS: false, AccessKeyID: "AKID", SecretAccessKey: "s3cr3t-value"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}

	without := func(k string) map[string][]byte {
		m := map[string][]byte{}
		for kk, v := range full {
			if kk != k {
				m[kk] = v
			}
		}
		return m
	}
	if c, err := S3ConfigFromSecret(without("tls")); err != nil || !c.TLS {
		t.Errorf("tls not given: TLS %v, %v; want true", c.TLS, err)
	}
	for _, k := range []string{"endpoint", "bucket", "accessKeyID", "secretAccessKey"} {
		if _, err := S3ConfigFromSecret(without(k)); err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("without %s: %v; want an error naming it", k, err)
		}
	}
	bad := without("tls")
	bad["tls"] = []byte("s3cr3t-value")
	if _, err := S3ConfigFromSecret(bad); err == nil {
		t.Error("tls: a non-boolean accepted")
	}
	withBadSecret := without("pathStyle")
	withBadSecret["pathStyle"] = []byte("maybe")
	if _, err := S3ConfigFromSecret(withBadSecret); err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("error %v: want one that does not quote the secret", err)
	}
}

func TestKeyFromSecret(t *testing.T) {
	if _, err := KeyFromSecret(map[string][]byte{"other": nil}); err == nil || !strings.Contains(err.Error(), `"key"`) {
		t.Errorf("missing field: %v", err)
	}
	k, err := KeyFromSecret(map[string][]byte{"key": []byte(strings.Repeat("07", KeySize))})
	if err != nil || k.ID() != testKey(t, 7).ID() {
		t.Errorf("KeyFromSecret = %v, %v", k.ID(), err)
	}
}
