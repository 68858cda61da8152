package upstream

import (
	"fmt"
	"testing"
)

// FuzzParseContentRange checks that whatever Content-Range the upstream
// sends, an accepted one describes a real span and formats back to itself.
func FuzzParseContentRange(f *testing.F) {
	for _, seed := range []string{
		"bytes 0-9/100", "bytes 10-19/*", "bytes 5-4/10", "bytes */100", "bytes 0-9/5",
		"bytes -1-9/100", "bytes 0-9223372036854775807/*", "bytes 1-2/3/4", "", "bytes  1-2/3",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if first, last, size, ok := parseContentRange(v); ok {
			if first < 0 || last < first || (size != -1 && size <= last) {
				t.Fatalf("parseContentRange(%q) = %d, %d, %d: not a span of the log", v, first, last, size)
			}
			total := "*"
			if size >= 0 {
				total = fmt.Sprint(size)
			}
			if again, l2, s2, ok2 := parseContentRange(fmt.Sprintf("bytes %d-%d/%s", first, last, total)); !ok2 || again != first || l2 != last || s2 != size {
				t.Fatalf("parseContentRange(%q) is not stable", v)
			}
		}
		if size, ok := unsatisfiedRangeSize(v); ok && size < 0 {
			t.Fatalf("unsatisfiedRangeSize(%q) = %d", v, size)
		}
	})
}

func TestRangeHeader(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		offset, limit int64
		want          string
	}{
		{0, 10, "bytes=0-9"},
		{100, 0, "bytes=100-"},
		{100, 1, "bytes=100-100"},
		{1, 1<<63 - 1, "bytes=1-"}, // the end would overflow: to the end
	} {
		if got := rangeHeader(tt.offset, tt.limit); got != tt.want {
			t.Errorf("rangeHeader(%d, %d) = %q, want %q", tt.offset, tt.limit, got, tt.want)
		}
	}
}
