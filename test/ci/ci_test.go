package ci

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestEnabled(t *testing.T) {
	for value, want := range map[string]bool{
		"true": true, "1": true, "TRUE": true, "t": true,
		"": false, "false": false, "0": false, "yes": false, "ci": false,
	} {
		t.Run(value, func(t *testing.T) {
			t.Setenv(Env, value)
			if got := Enabled(); got != want {
				t.Errorf("CI=%q: Enabled() = %v, want %v", value, got, want)
			}
		})
	}
}

// The committed allow-list loads, and every entry has its reason.
func TestCommittedAllowList(t *testing.T) {
	if _, err := AllowedSkips(); err != nil {
		t.Fatal(err)
	}
}

func TestParseAllowList(t *testing.T) {
	for name, tc := range map[string]struct {
		yaml    string
		want    []AllowedSkip
		wantErr bool
	}{
		"empty": {yaml: "skips: []\n", want: []AllowedSkip{}},
		"entry": {
			yaml: "skips:\n- package: p\n  test: TestA\n  kernel: 6.1.0\n  reason: needs a GPU\n",
			want: []AllowedSkip{{Package: "p", Test: "TestA", Kernel: "6.1.0", Reason: "needs a GPU"}},
		},
		"no reason":     {yaml: "skips:\n- package: p\n  test: TestA\n", wantErr: true},
		"blank reason":  {yaml: "skips:\n- package: p\n  test: TestA\n  reason: ' '\n", wantErr: true},
		"no test":       {yaml: "skips:\n- package: p\n  reason: r\n", wantErr: true},
		"unknown field": {yaml: "skips:\n- package: p\n  test: TestA\n  reason: r\n  until: never\n", wantErr: true},
		"not yaml":      {yaml: "skips: [", wantErr: true},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := parseAllowList([]byte(tc.yaml))
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error: %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("entries (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAllowed(t *testing.T) {
	list := []AllowedSkip{
		{Package: "p", Test: "TestGPU", Reason: "needs a GPU"},
		{Package: "p", Test: "TestCRIU", Kernel: "6.18.1", Reason: "criu dump hangs on this kernel"},
	}
	for _, tc := range []struct {
		pkg, test, kernel string
		want              bool
	}{
		{"p", "TestGPU", "6.1.0", true},
		{"p", "TestGPU/sub", "6.1.0", true},
		{"p", "TestGPUX", "6.1.0", false},
		{"q", "TestGPU", "6.1.0", false},
		{"p", "TestCRIU", "6.18.1", true},
		{"p", "TestCRIU/restore", "6.18.1", true},
		{"p", "TestCRIU", "6.18.2", false},
		{"p", "TestOther", "6.18.1", false},
	} {
		if _, got := Allowed(list, tc.pkg, tc.test, tc.kernel); got != tc.want {
			t.Errorf("Allowed(%s, %s, %s) = %v, want %v", tc.pkg, tc.test, tc.kernel, got, tc.want)
		}
	}
}
