package cuda

import (
	"strings"
	"testing"
)

// GPU UUIDs come from metadata.json of checkpoint images, gRPC requests and annotations:
// ParseUUID accepts exactly NVIDIA's format, and what it accepts prints back the same.
func FuzzParseUUID(f *testing.F) {
	f.Add("GPU-aaaaaaaa-0000-0000-0000-000000000001")
	f.Add("GPU-AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE")
	f.Add("GPU-aaaaaaaa-0000-0000-0000-00000000000g")
	f.Add("MIG-aaaaaaaa-0000-0000-0000-000000000001")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUUID(s)
		if err != nil {
			if !u.IsZero() {
				t.Errorf("ParseUUID(%q) failed but returned %v", s, u)
			}
			return
		}
		if !strings.EqualFold(u.String(), s) {
			t.Errorf("ParseUUID(%q) = %s: prints back differently", s, u)
		}
		again, err := ParseUUID(u.String())
		if err != nil || again != u {
			t.Errorf("ParseUUID(%s) = %v, %v: want %v", u, again, err, u)
		}
	})
}
