package storage

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// The encrypted file format (STREAM over AES-256-GCM, see the package doc):
//
//	header: magic (8) | chunk size, big endian (4) | HKDF salt (32) | nonce prefix (7)
//	chunks: AES-256-GCM(plaintext chunk) || tag (16), nonce = prefix || counter (4, BE) || last (1)
//
// Every chunk but the last holds exactly chunk size bytes of plaintext; the last holds 0 to
// chunk size bytes and is sealed with last = 1. An empty file is one empty last chunk.
const (
	magic        = "KYBSTRM1"
	saltSize     = 32
	prefixSize   = 7
	headerSize   = len(magic) + 4 + saltSize + prefixSize
	tagSize      = 16
	nonceSize    = prefixSize + 4 + 1
	fileKeyInfo  = "kybernate image file v1\x00"
	minChunkSize = 16
	maxChunkSize = 16 << 20
	// DefaultChunkSize is the plaintext chunk size of files the package writes.
	DefaultChunkSize = 1 << 20
)

// ErrAuthentication: a chunk of an encrypted file does not authenticate under the key, so the
// file was changed, cut short, extended, reordered, moved from another place, or the key is
// not the one it was written with.
var ErrAuthentication = errors.New("message authentication failed")

// EncryptedSize is the size of the encrypted form of a plaintext of size bytes.
func EncryptedSize(size int64, chunkSize int) int64 {
	chunks := (size + int64(chunkSize) - 1) / int64(chunkSize)
	if chunks == 0 {
		chunks = 1
	}
	return int64(headerSize) + size + chunks*tagSize
}

// fileAEAD derives the file key for place (the image and file the ciphertext belongs to, so
// that a file copied elsewhere does not decrypt there).
func fileAEAD(key Key, salt []byte, place string) (cipher.AEAD, error) {
	fk, err := key.derive(salt, fileKeyInfo+place, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(fk)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCMWithNonceSize(block, nonceSize)
}

type stream struct {
	aead    cipher.AEAD
	prefix  [prefixSize]byte
	counter uint64
	nonce   [nonceSize]byte
}

func (s *stream) nextNonce(last bool) ([]byte, error) {
	if s.counter > math.MaxUint32 {
		return nil, fmt.Errorf("encrypted file has more than %d chunks", uint64(math.MaxUint32)+1)
	}
	copy(s.nonce[:], s.prefix[:])
	binary.BigEndian.PutUint32(s.nonce[prefixSize:], uint32(s.counter))
	s.nonce[nonceSize-1] = 0
	if last {
		s.nonce[nonceSize-1] = 1
	}
	s.counter++
	return s.nonce[:], nil
}

// Encrypter encrypts a stream; Close seals the last chunk and must be called.
type Encrypter struct {
	w      io.Writer
	s      stream
	chunk  int
	buf    []byte
	n      int
	err    error
	closed bool
}

// NewEncrypter writes the header to w and returns a writer that encrypts what it is given
// into w, for the file at place (see Decrypt).
func NewEncrypter(w io.Writer, key Key, place string, chunkSize int) (*Encrypter, error) {
	if chunkSize < minChunkSize || chunkSize > maxChunkSize {
		return nil, fmt.Errorf("chunk size %d out of range [%d, %d]", chunkSize, minChunkSize, maxChunkSize)
	}
	hdr := make([]byte, headerSize)
	copy(hdr, magic)
	binary.BigEndian.PutUint32(hdr[len(magic):], uint32(chunkSize))
	salt := hdr[len(magic)+4 : len(magic)+4+saltSize]
	if _, err := rand.Read(hdr[len(magic)+4:]); err != nil {
		return nil, err
	}
	aead, err := fileAEAD(key, salt, place)
	if err != nil {
		return nil, err
	}
	e := &Encrypter{w: w, chunk: chunkSize, buf: make([]byte, chunkSize, chunkSize+tagSize)}
	e.s.aead = aead
	copy(e.s.prefix[:], hdr[headerSize-prefixSize:])
	if _, err := w.Write(hdr); err != nil {
		return nil, err
	}
	return e, nil
}

// Write encrypts p. A full chunk is sealed only when more data follows, so that Close can
// mark the last one.
func (e *Encrypter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	if e.closed {
		return 0, errors.New("write to a closed encrypter")
	}
	written := 0
	for len(p) > 0 {
		if e.n == e.chunk {
			if err := e.seal(false); err != nil {
				return written, err
			}
		}
		c := copy(e.buf[e.n:e.chunk], p)
		e.n += c
		p = p[c:]
		written += c
	}
	return written, nil
}

// Close seals and writes the last chunk. It does not close the underlying writer.
func (e *Encrypter) Close() error {
	if e.closed {
		return e.err
	}
	e.closed = true
	if e.err != nil {
		return e.err
	}
	return e.seal(true)
}

func (e *Encrypter) seal(last bool) error {
	nonce, err := e.s.nextNonce(last)
	if err != nil {
		e.err = err
		return err
	}
	out := e.s.aead.Seal(e.buf[:0], nonce, e.buf[:e.n], nil)
	if _, err := e.w.Write(out); err != nil {
		e.err = err
		return err
	}
	e.n = 0
	e.buf = e.buf[:e.chunk]
	return nil
}

// Decrypter is an io.Reader of the plaintext of an encrypted stream. It returns only
// authenticated plaintext, and io.EOF only after the last chunk authenticated: a stream cut
// at a chunk boundary is an error, not a short file.
type Decrypter struct {
	r     io.Reader
	s     stream
	seg   int
	in    []byte // ciphertext read ahead: up to one segment and one byte
	inLen int
	plain []byte // the opened chunk
	out   []byte // plaintext not yet returned
	done  bool
	err   error
}

// NewDecrypter reads the header from r and returns a reader of the plaintext of the file at
// place, which must be the place it was encrypted for.
func NewDecrypter(r io.Reader, key Key, place string) (*Decrypter, error) {
	hdr := make([]byte, headerSize)
	if _, err := io.ReadFull(r, hdr); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("encrypted file shorter than its header (%d bytes): %w", headerSize, ErrAuthentication)
		}
		return nil, err
	}
	if string(hdr[:len(magic)]) != magic {
		return nil, fmt.Errorf("not an encrypted image file (magic %q): %w", hdr[:len(magic)], ErrAuthentication)
	}
	chunk := int(binary.BigEndian.Uint32(hdr[len(magic):]))
	if chunk < minChunkSize || chunk > maxChunkSize {
		return nil, fmt.Errorf("encrypted file header: chunk size %d out of range [%d, %d]: %w", chunk, minChunkSize, maxChunkSize, ErrAuthentication)
	}
	salt := hdr[len(magic)+4 : len(magic)+4+saltSize]
	aead, err := fileAEAD(key, salt, place)
	if err != nil {
		return nil, err
	}
	d := &Decrypter{r: r, seg: chunk + tagSize, in: make([]byte, chunk+tagSize+1), plain: make([]byte, 0, chunk)}
	d.s.aead = aead
	copy(d.s.prefix[:], hdr[headerSize-prefixSize:])
	return d, nil
}

func (d *Decrypter) Read(p []byte) (int, error) {
	for len(d.out) == 0 {
		if d.err != nil {
			return 0, d.err
		}
		if d.done {
			return 0, io.EOF
		}
		d.err = d.next()
	}
	n := copy(p, d.out)
	d.out = d.out[n:]
	return n, nil
}

// WriteTo writes the plaintext to w a whole chunk at a time (io.Copy uses it), and only
// chunks that authenticated.
func (d *Decrypter) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if len(d.out) > 0 {
			n, err := w.Write(d.out)
			total += int64(n)
			d.out = d.out[n:]
			if err != nil {
				return total, err
			}
		}
		if d.err != nil {
			return total, d.err
		}
		if d.done {
			return total, nil
		}
		d.err = d.next()
	}
}

// next reads and opens one chunk. A chunk is the last one when the stream ends within one
// byte past it.
func (d *Decrypter) next() error {
	n, err := io.ReadFull(d.r, d.in[d.inLen:])
	d.inLen += n
	last := false
	switch {
	case err == nil:
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		last = true
	default:
		return err
	}
	chunk := d.inLen
	if !last {
		chunk = d.seg
	}
	idx := d.s.counter
	if chunk < tagSize {
		return fmt.Errorf("chunk %d: %d bytes, shorter than a tag (stream cut short): %w", idx, chunk, ErrAuthentication)
	}
	nonce, err := d.s.nextNonce(last)
	if err != nil {
		return err
	}
	plain, err := d.s.aead.Open(d.plain[:0], nonce, d.in[:chunk], nil)
	if err != nil {
		return fmt.Errorf("chunk %d: %w", idx, ErrAuthentication)
	}
	d.out = plain
	d.done = last
	d.inLen = 0
	if !last {
		// The byte read ahead starts the next chunk.
		d.in[0] = d.in[d.seg]
		d.inLen = 1
	}
	return nil
}
