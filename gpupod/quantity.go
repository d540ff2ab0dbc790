package gpupod

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
)

// maxExponent bounds the decimal exponent of a quantity written by a user: resource.ParseQuantity
// takes time quadratic in the exponent ("1e-999999999" takes minutes), and no byte count
// needs more than 10^±64.
const maxExponent = 64

// ParseQuantity parses a quantity from an annotation or a flag (surrounding blanks ignored) and
// refuses a decimal exponent past ±64 before resource.ParseQuantity spends minutes on it.
func ParseQuantity(s string) (resource.Quantity, error) {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexAny(s, "eE"); i > 0 && i+1 < len(s) {
		// "5E" is the exa suffix, "5Ei" exbi; "5e3" and "5E-3" are exponents.
		if exp, err := strconv.Atoi(s[i+1:]); err == nil || isIntegerOverflow(err) {
			if err != nil || exp > maxExponent || exp < -maxExponent {
				return resource.Quantity{}, fmt.Errorf("quantity %q: exponent past ±%d", s, maxExponent)
			}
		}
	}
	return resource.ParseQuantity(s)
}

func isIntegerOverflow(err error) bool {
	ne, ok := err.(*strconv.NumError)
	return ok && ne.Err == strconv.ErrRange
}
