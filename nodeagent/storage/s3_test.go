package storage

import (
	"strings"
	"testing"
)

func TestNewS3Validates(t *testing.T) {
	good := S3Config{Endpoint: "127.0.0.1:9000", Bucket: "b", AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "wJalrXUtnFEMI-secret"}
	cases := map[string]func(c *S3Config){
		"scheme in endpoint": func(c *S3Config) { c.Endpoint = "http://127.0.0.1:9000" },
		"no endpoint":        func(c *S3Config) { c.Endpoint = "" },
		"no bucket":          func(c *S3Config) { c.Bucket = "" },
		"no secret":          func(c *S3Config) { c.SecretAccessKey = "" },
		"small parts":        func(c *S3Config) { c.PartSize = 1 << 20 },
		"bad CA bundle":      func(c *S3Config) { c.TLS, c.CABundle = true, []byte("not pem") },
	}
	for name, change := range cases {
		c := good
		change(&c)
		if _, err := NewS3(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	s, err := NewS3(good)
	if err != nil {
		t.Fatal(err)
	}
	if str := s.String(); strings.Contains(str, good.SecretAccessKey) || strings.Contains(str, good.AccessKeyID) {
		t.Errorf("String() shows credentials: %s", str)
	}
}
