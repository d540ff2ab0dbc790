package cuda

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// UUID identifies a GPU: the 16 bytes of cuDeviceGetUuid, which NVML and
// nvidia-smi print as GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx. GPUs are
// mapped by UUID only; ordinals and PCI bus ids change across restores.
type UUID [16]byte

const uuidPrefix = "GPU-"

// String renders u in NVIDIA's format, lowercase.
func (u UUID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:36], u[10:16])
	return uuidPrefix + string(b[:])
}

// IsZero reports whether u is the zero UUID, which no GPU has.
func (u UUID) IsZero() bool {
	return u == UUID{}
}

// ParseUUID parses NVIDIA's format, GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx,
// hex digits in either case.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	rest, ok := strings.CutPrefix(s, uuidPrefix)
	if !ok {
		return u, fmt.Errorf("parse gpu uuid %q: want prefix %q", s, uuidPrefix)
	}
	if len(rest) != 36 || rest[8] != '-' || rest[13] != '-' || rest[18] != '-' || rest[23] != '-' {
		return u, fmt.Errorf("parse gpu uuid %q: want %sxxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s, uuidPrefix)
	}
	digits := rest[0:8] + rest[9:13] + rest[14:18] + rest[19:23] + rest[24:36]
	if _, err := hex.Decode(u[:], []byte(digits)); err != nil {
		return UUID{}, fmt.Errorf("parse gpu uuid %q: %w", s, err)
	}
	return u, nil
}

// MustParseUUID is ParseUUID for constants in tests and fixtures; it panics
// on malformed input.
func MustParseUUID(s string) UUID {
	u, err := ParseUUID(s)
	if err != nil {
		panic(err)
	}
	return u
}

// MarshalText implements encoding.TextMarshaler.
func (u UUID) MarshalText() ([]byte, error) {
	return []byte(u.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (u *UUID) UnmarshalText(b []byte) error {
	v, err := ParseUUID(string(b))
	if err != nil {
		return err
	}
	*u = v
	return nil
}
