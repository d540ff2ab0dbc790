package probe

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
)

// reporter writes one record per line: key=value pairs (logfmt), or with
// JSON one object per line, so that scripts can parse every figure.
type reporter struct {
	mu   sync.Mutex
	w    io.Writer
	json bool
}

// emit writes the alternating keys and values kv as one record.
func (r *reporter) emit(kv ...any) {
	if len(kv)%2 != 0 {
		kv = append(kv, "MISSING")
	}
	var b strings.Builder
	if r.json {
		b.WriteByte('{')
	}
	for i := 0; i < len(kv); i += 2 {
		key := fmt.Sprint(kv[i])
		val := normalize(kv[i+1])
		if r.json {
			if i > 0 {
				b.WriteByte(',')
			}
			k, _ := json.Marshal(key)
			v, err := json.Marshal(val)
			if err != nil {
				v, _ = json.Marshal(fmt.Sprint(val))
			}
			b.Write(k)
			b.WriteByte(':')
			b.Write(v)
			continue
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(key)
		b.WriteByte('=')
		b.WriteString(logfmtValue(val))
	}
	if r.json {
		b.WriteByte('}')
	}
	b.WriteByte('\n')
	r.mu.Lock()
	defer r.mu.Unlock()
	io.WriteString(r.w, b.String())
}

// normalize turns values into what both formats print: durations become
// milliseconds, errors their message, floats rounded to 3 decimals.
func normalize(v any) any {
	switch x := v.(type) {
	case time.Duration:
		return round3(float64(x) / float64(time.Millisecond))
	case error:
		if x == nil {
			return ""
		}
		return x.Error()
	case float64:
		return round3(x)
	case fmt.Stringer:
		return x.String()
	}
	return v
}

func round3(f float64) float64 {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return 0
	}
	return math.Round(f*1000) / 1000
}

func logfmtValue(v any) string {
	var s string
	switch x := v.(type) {
	case float64:
		s = strconv.FormatFloat(x, 'f', -1, 64)
	case string:
		s = x
	default:
		s = fmt.Sprint(x)
	}
	if s == "" || strings.ContainsAny(s, " =\"\t\n") {
		return strconv.Quote(s)
	}
	return s
}

// gbps is bytes per second in GB (10^9) per second.
func gbps(bytes uint64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(bytes) / d.Seconds() / 1e9
}
