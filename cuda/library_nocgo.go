//go:build !cgo

package cuda

import "fmt"

// DefaultLibrary is the soname of the driver's user-space library.
const DefaultLibrary = "libcuda.so.1"

// Option configures New.
type Option func(*options)

type options struct {
	path string
}

// WithLibraryPath loads the driver library from path (a soname or a file)
// instead of DefaultLibrary.
func WithLibraryPath(path string) Option {
	return func(o *options) { o.path = path }
}

// New fails in binaries built without cgo: the driver can only be loaded
// through dlopen.
func New(opts ...Option) (Interface, error) {
	return nil, fmt.Errorf("%w: built without cgo (CGO_ENABLED=0)", ErrNoDriver)
}
