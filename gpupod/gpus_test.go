package gpupod

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const (
	gpu0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
	gpu1 = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
)

func TestParseGPUs(t *testing.T) {
	tests := []struct {
		value   string
		want    []string
		wantErr string
	}{
		{value: gpu0, want: []string{gpu0}},
		{value: " " + gpu0 + " , " + gpu1 + ",", want: []string{gpu0, gpu1}},
		{value: "0", wantErr: `"0" is not a GPU UUID`},
		{value: gpu0 + "," + gpu0, wantErr: "listed twice"},
		{value: " , ", wantErr: "no gpu uuid"},
	}
	for _, tt := range tests {
		got, err := ParseGPUs(tt.value)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseGPUs(%q) error %v, want %q", tt.value, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseGPUs(%q): %v", tt.value, err)
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("ParseGPUs(%q) (-want +got):\n%s", tt.value, diff)
		}
	}
}
