package cuda

import (
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func testUUIDs(n int) []UUID {
	out := make([]UUID, n)
	for i := range out {
		out[i] = MustParseUUID(fmt.Sprintf("GPU-%08x-0000-0000-0000-0000000000%02x", i+1, i+1))
	}
	return out
}

func TestRemapPairs(t *testing.T) {
	g := testUUIDs(5)
	a, b, c, d, e := g[0], g[1], g[2], g[3], g[4]
	unknown := MustParseUUID("GPU-ffffffff-ffff-ffff-ffff-ffffffffffff")
	tests := []struct {
		name    string
		all     []UUID
		moves   map[UUID]UUID
		want    []GPUPair
		wantErr bool
	}{
		{name: "no moves", all: g[:2], moves: nil, want: nil},
		{name: "identity move", all: g[:2], moves: map[UUID]UUID{a: a}, want: nil},
		{name: "no gpus, no moves", all: nil, moves: nil, want: nil},
		{
			// Measured on 2xH200: {a->b} alone is refused, the swap works.
			name: "1 of 2", all: g[:2], moves: map[UUID]UUID{a: b},
			want: []GPUPair{{Old: a, New: b}, {Old: b, New: a}},
		},
		{
			name: "1 of 2, the other way", all: g[:2], moves: map[UUID]UUID{b: a},
			want: []GPUPair{{Old: a, New: b}, {Old: b, New: a}},
		},
		{
			name: "1 of 4, identity for the rest", all: g[:4], moves: map[UUID]UUID{b: d},
			want: []GPUPair{{Old: a, New: a}, {Old: b, New: d}, {Old: c, New: c}, {Old: d, New: b}},
		},
		{
			name: "2 of 4 onto the other 2", all: g[:4], moves: map[UUID]UUID{a: c, b: d},
			want: []GPUPair{{Old: a, New: c}, {Old: b, New: d}, {Old: c, New: a}, {Old: d, New: b}},
		},
		{
			name: "2 of 4 swapped with each other", all: g[:4], moves: map[UUID]UUID{a: b, b: a},
			want: []GPUPair{{Old: a, New: b}, {Old: b, New: a}, {Old: c, New: c}, {Old: d, New: d}},
		},
		{
			name: "chain closes into a cycle", all: g[:4], moves: map[UUID]UUID{a: b, b: c},
			want: []GPUPair{{Old: a, New: b}, {Old: b, New: c}, {Old: c, New: a}, {Old: d, New: d}},
		},
		{
			name: "chain listed out of order", all: []UUID{d, c, b, a}, moves: map[UUID]UUID{c: a, b: c},
			want: []GPUPair{{Old: d, New: d}, {Old: c, New: a}, {Old: b, New: c}, {Old: a, New: b}},
		},
		{
			name: "cycle of 3 kept", all: g[:4], moves: map[UUID]UUID{a: b, b: c, c: a},
			want: []GPUPair{{Old: a, New: b}, {Old: b, New: c}, {Old: c, New: a}, {Old: d, New: d}},
		},
		{
			name: "two chains", all: g, moves: map[UUID]UUID{a: b, c: d, d: e},
			want: []GPUPair{{Old: a, New: b}, {Old: b, New: a}, {Old: c, New: d}, {Old: d, New: e}, {Old: e, New: c}},
		},
		{
			name: "identity beside a move", all: g[:3], moves: map[UUID]UUID{a: a, b: c},
			want: []GPUPair{{Old: a, New: a}, {Old: b, New: c}, {Old: c, New: b}},
		},
		{name: "unknown source", all: g[:2], moves: map[UUID]UUID{unknown: a}, wantErr: true},
		{name: "unknown target", all: g[:2], moves: map[UUID]UUID{a: unknown}, wantErr: true},
		{name: "unknown identity", all: g[:2], moves: map[UUID]UUID{unknown: unknown}, wantErr: true},
		{name: "duplicate targets", all: g[:3], moves: map[UUID]UUID{a: c, b: c}, wantErr: true},
		{name: "target pinned in place", all: g[:3], moves: map[UUID]UUID{a: b, b: b}, wantErr: true},
		{name: "gpu listed twice", all: []UUID{a, b, a}, moves: map[UUID]UUID{a: b}, wantErr: true},
		{name: "zero uuid listed", all: []UUID{a, {}}, moves: map[UUID]UUID{a: b}, wantErr: true},
		{name: "moves but no gpus", all: nil, moves: map[UUID]UUID{a: b}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := RemapPairs(tt.all, tt.moves)
			if (err != nil) != tt.wantErr {
				t.Fatalf("RemapPairs() error = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalidRemap) {
				t.Errorf("RemapPairs() error = %v, want it to match ErrInvalidRemap", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("RemapPairs() (-want +got):\n%s", diff)
			}
			if got != nil {
				checkBijection(t, tt.all, tt.moves, got)
			}
		})
	}
}

// checkBijection asserts the properties the driver needs independently of
// the expected tables: every visible GPU once as Old and once as New, and
// every requested move present.
func checkBijection(t *testing.T, all []UUID, moves map[UUID]UUID, pairs []GPUPair) {
	t.Helper()
	olds, news := map[UUID]int{}, map[UUID]int{}
	for _, p := range pairs {
		olds[p.Old]++
		news[p.New]++
	}
	for _, u := range all {
		if olds[u] != 1 || news[u] != 1 {
			t.Errorf("gpu %s appears %d times as old and %d times as new, want once each", u, olds[u], news[u])
		}
	}
	if len(pairs) != len(all) {
		t.Errorf("%d pairs for %d gpus", len(pairs), len(all))
	}
	for src, dst := range moves {
		found := false
		for _, p := range pairs {
			found = found || p == GPUPair{Old: src, New: dst}
		}
		if !found {
			t.Errorf("move %s -> %s missing from pairs", src, dst)
		}
	}
}
