package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/yaml"
)

// Output formats of -o.
const (
	outputTable = ""
	outputWide  = "wide"
	outputJSON  = "json"
	outputYAML  = "yaml"
)

// checkOutput rejects a format the command does not know.
func checkOutput(format string) error {
	switch format {
	case outputTable, outputWide, outputJSON, outputYAML:
		return nil
	}
	return fmt.Errorf("unknown output format %q: want wide, json or yaml", format)
}

// printStructured writes v as JSON or YAML and reports whether the format was one of them.
func printStructured(w io.Writer, format string, v any) (bool, error) {
	switch format {
	case outputJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "    ")
		return true, enc.Encode(v)
	case outputYAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return true, err
		}
		_, err = w.Write(b)
		return true, err
	}
	return false, nil
}

// table writes rows under a header, aligned as kubectl aligns its tables.
type table struct {
	w *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{w: tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cells ...string) {
	fmt.Fprintln(t.w, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.w.Flush() }

// bytes prints a byte count as a binary quantity ("40Gi"); 0 as "0".
func bytes(n int64) string {
	return resource.NewQuantity(n, resource.BinarySI).String()
}

// gib prints a byte count in GiB with one decimal, for columns that compare sizes.
func gib(n int64) string {
	return fmt.Sprintf("%.1fGi", float64(n)/(1<<30))
}

// since prints a duration the way kubectl prints ages; "-" for a zero time.
func since(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return duration.HumanDuration(now.Sub(t))
}

// orDash is s, or "-" when s is empty, for table cells.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
