package cuda

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseUUID(t *testing.T) {
	tests := []struct {
		in      string
		want    UUID
		wantErr bool
	}{
		{
			in:   "GPU-0123abcd-4567-89ef-0a1b-2c3d4e5f6789",
			want: UUID{0x01, 0x23, 0xab, 0xcd, 0x45, 0x67, 0x89, 0xef, 0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x67, 0x89},
		},
		{
			in:   "GPU-0123ABCD-4567-89EF-0A1B-2C3D4E5F6789",
			want: UUID{0x01, 0x23, 0xab, 0xcd, 0x45, 0x67, 0x89, 0xef, 0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x67, 0x89},
		},
		{in: "0123abcd-4567-89ef-0a1b-2c3d4e5f6789", wantErr: true},
		{in: "MIG-0123abcd-4567-89ef-0a1b-2c3d4e5f6789", wantErr: true},
		{in: "GPU-0123abcd-4567-89ef-0a1b-2c3d4e5f678", wantErr: true},
		{in: "GPU-0123abcd-4567-89ef-0a1b-2c3d4e5f67890", wantErr: true},
		{in: "GPU-0123abcd_4567-89ef-0a1b-2c3d4e5f6789", wantErr: true},
		{in: "GPU-0123abcd-4567-89ef-0a1b-2c3d4e5f678g", wantErr: true},
		{in: "GPU-0123abcd45678-9ef-0a1b-2c3d4e5f6789", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseUUID(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseUUID(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseUUID(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestUUIDString(t *testing.T) {
	u := UUID{0x01, 0x23, 0xab, 0xcd, 0x45, 0x67, 0x89, 0xef, 0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x67, 0x89}
	if got, want := u.String(), "GPU-0123abcd-4567-89ef-0a1b-2c3d4e5f6789"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got, want := (UUID{}).String(), "GPU-00000000-0000-0000-0000-000000000000"; got != want {
		t.Errorf("zero String() = %q, want %q", got, want)
	}
	back, err := ParseUUID(u.String())
	if err != nil || back != u {
		t.Errorf("ParseUUID(String()) = %v, %v, want %v", back, err, u)
	}
}

func TestUUIDJSON(t *testing.T) {
	in := map[string]UUID{"gpu": MustParseUUID("GPU-0123abcd-4567-89ef-0a1b-2c3d4e5f6789")}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"gpu":"GPU-0123abcd-4567-89ef-0a1b-2c3d4e5f6789"}`; got != want {
		t.Errorf("json = %s, want %s", got, want)
	}
	var out map[string]UUID
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(in, out); diff != "" {
		t.Errorf("json round trip (-want +got):\n%s", diff)
	}
	if err := json.Unmarshal([]byte(`{"gpu":"GPU-bad"}`), &out); err == nil {
		t.Error("unmarshal of a malformed uuid succeeded")
	}
}
