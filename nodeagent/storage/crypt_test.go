package storage

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"testing"
)

func testKey(t testing.TB, b byte) Key {
	t.Helper()
	k, err := ParseKey(bytes.Repeat([]byte{b}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func encrypt(t testing.TB, key Key, place string, chunk int, plain []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc, err := NewEncrypter(&buf, key, place, chunk)
	if err != nil {
		t.Fatal(err)
	}
	// Odd write sizes cross chunk boundaries.
	for p := plain; len(p) > 0; {
		n := min(len(p), 7)
		if _, err := enc.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func decrypt(key Key, place string, ct []byte) ([]byte, error) {
	dec, err := NewDecrypter(bytes.NewReader(ct), key, place)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(dec)
}

func TestEncryptRoundTrip(t *testing.T) {
	key := testKey(t, 1)
	const chunk = 64
	for _, size := range []int{0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk, 3*chunk + 5} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			plain := make([]byte, size)
			rand.Read(plain)
			ct := encrypt(t, key, "ns/img\x00f", chunk, plain)
			if got, want := int64(len(ct)), EncryptedSize(int64(size), chunk); got != want {
				t.Errorf("ciphertext %d bytes, EncryptedSize says %d", got, want)
			}
			if size >= 16 && bytes.Contains(ct, plain[:16]) {
				t.Error("ciphertext contains the plaintext")
			}
			got, err := decrypt(key, "ns/img\x00f", ct)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, plain) {
				t.Error("decrypted plaintext differs")
			}
		})
	}
}

// Every change to the ciphertext, and every other key or place, must fail authentication.
func TestDecryptRefusesTampering(t *testing.T) {
	key := testKey(t, 1)
	const chunk, place = 32, "ns/img\x00pages-1.img"
	plain := make([]byte, 4*chunk+10) // chunks 0..3 full, chunk 4 the last
	rand.Read(plain)
	ct := encrypt(t, key, place, chunk, plain)
	seg := chunk + tagSize
	body := func(i int) []byte { return ct[headerSize+i*seg : min(len(ct), headerSize+(i+1)*seg)] }
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	flip := func(i int) []byte { c := bytes.Clone(ct); c[i] ^= 1; return c }

	cases := map[string]struct {
		ct    []byte
		key   Key
		place string
	}{
		"bit flipped in a chunk":    {ct: flip(headerSize + seg + 3)},
		"bit flipped in a tag":      {ct: flip(len(ct) - 1)},
		"bit flipped in the salt":   {ct: flip(len(magic) + 4)},
		"bit flipped in the prefix": {ct: flip(headerSize - 1)},
		"chunk size changed":        {ct: flip(len(magic) + 3)},
		"cut at a chunk boundary":   {ct: ct[:headerSize+2*seg]},
		"cut inside a chunk":        {ct: ct[:headerSize+2*seg+5]},
		"last chunk dropped":        {ct: ct[:headerSize+4*seg]},
		"header only":               {ct: ct[:headerSize]},
		"chunks 1 and 2 swapped":    {ct: join(ct[:headerSize], body(0), body(2), body(1), body(3), body(4))},
		"chunk repeated":            {ct: join(ct[:headerSize], body(0), body(0), body(1), body(2), body(3), body(4))},
		"data appended":             {ct: join(ct, []byte{0})},
		"chunk appended":            {ct: join(ct, body(1))},
		"other key":                 {ct: ct, key: testKey(t, 2)},
		"other place (file moved)":  {ct: ct, place: "ns/img\x00pages-2.img"},
		"other image (file copied)": {ct: ct, place: "ns/other\x00pages-1.img"},
		"another file's chunk":      {ct: join(ct[:headerSize], body(0), encrypt(t, key, place, chunk, plain)[headerSize+seg:])},
		"empty":                     {ct: nil},
		"magic changed":             {ct: flip(0)},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			k, p := key, place
			if !tc.key.IsZero() {
				k = tc.key
			}
			if tc.place != "" {
				p = tc.place
			}
			got, err := decrypt(k, p, tc.ct)
			if !errors.Is(err, ErrAuthentication) {
				t.Fatalf("decrypt = %d bytes, %v; want ErrAuthentication", len(got), err)
			}
		})
	}
}

// A reader never hands out plaintext of a chunk that did not authenticate.
func TestDecryptReturnsOnlyAuthenticated(t *testing.T) {
	key := testKey(t, 1)
	plain := bytes.Repeat([]byte("a"), 100)
	ct := encrypt(t, key, "p", 32, plain)
	ct[headerSize+2*(32+tagSize)+1] ^= 1 // chunk 2
	dec, err := NewDecrypter(bytes.NewReader(ct), key, "p")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(dec)
	if !errors.Is(err, ErrAuthentication) {
		t.Fatalf("err = %v, want ErrAuthentication", err)
	}
	if len(got) != 64 {
		t.Errorf("got %d bytes before the error, want the 64 of chunks 0 and 1", len(got))
	}
}

func TestEncrypterChunkSizeBounds(t *testing.T) {
	for _, c := range []int{0, minChunkSize - 1, maxChunkSize + 1} {
		if _, err := NewEncrypter(io.Discard, testKey(t, 1), "p", c); err == nil {
			t.Errorf("chunk size %d accepted", c)
		}
	}
}

func TestKeyNeverPrinted(t *testing.T) {
	raw := bytes.Repeat([]byte{0xab}, KeySize)
	k, err := ParseKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	type wrapper struct{ K Key }
	for _, s := range []string{
		fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %x %X %s %q", k, k, k, k, k, k, k),
		fmt.Sprintf("%+v %#v", wrapper{k}, wrapper{k}), fmt.Sprintf("%v", &k),
	} {
		if bytes.Contains([]byte(s), []byte("ab")) || bytes.Contains([]byte(s), []byte("AB")) || bytes.Contains([]byte(s), raw) {
			t.Errorf("key printed: %q", s)
		}
	}
}

func TestParseKey(t *testing.T) {
	raw := bytes.Repeat([]byte{7}, KeySize)
	want := testKey(t, 7).ID()
	for name, in := range map[string][]byte{
		"raw":    raw,
		"base64": []byte("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n"),
		"hex":    []byte(" 0707070707070707070707070707070707070707070707070707070707070707 "),
	} {
		k, err := ParseKey(in)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if k.ID() != want {
			t.Errorf("%s: key id %s, want %s", name, k.ID(), want)
		}
	}
	for _, bad := range [][]byte{nil, []byte("short"), bytes.Repeat([]byte{1}, KeySize+1)} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%d bytes) accepted", len(bad))
		}
	}
	if testKey(t, 1).ID() == testKey(t, 2).ID() {
		t.Error("two keys have one id")
	}
}

// io.Copy takes WriteTo; it hands out the same plaintext as Read, and nothing of a chunk
// that does not authenticate.
func TestDecrypterWriteTo(t *testing.T) {
	key := testKey(t, 1)
	plain := make([]byte, 100)
	rand.Read(plain)
	ct := encrypt(t, key, "p", 32, plain)
	for name, tc := range map[string]struct {
		ct      []byte
		want    []byte
		wantErr bool
	}{
		"intact":          {ct: ct, want: plain},
		"chunk 2 changed": {ct: func() []byte { c := bytes.Clone(ct); c[headerSize+2*(32+tagSize)] ^= 1; return c }(), want: plain[:64], wantErr: true},
	} {
		t.Run(name, func(t *testing.T) {
			dec, err := NewDecrypter(bytes.NewReader(tc.ct), key, "p")
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			n, err := io.Copy(&out, dec)
			if (err != nil) != tc.wantErr || (err != nil && !errors.Is(err, ErrAuthentication)) {
				t.Fatalf("io.Copy: %v, want error %v", err, tc.wantErr)
			}
			if n != int64(len(tc.want)) || !bytes.Equal(out.Bytes(), tc.want) {
				t.Errorf("io.Copy wrote %d bytes, want the %d authenticated ones", n, len(tc.want))
			}
		})
	}
}
