package gateway

import (
	"fmt"
	"testing"
)

// FuzzParseRange checks that any Range header yields either no range (the
// whole log is sent) or one the mirror can answer: a first byte at or after
// 0 and a last byte, when given, not before it; and that printing the
// result back parses to the same range.
func FuzzParseRange(f *testing.F) {
	for _, seed := range []string{
		"bytes=0-", "bytes=100-199", "bytes=-500", "bytes=0-1,5-6", "Bytes = 7 - 9 ", "bytes=9-1",
		"lines=1-2", "bytes=99999999999999999999-", "bytes=1-9223372036854775807", "bytes=+1-2", "bytes=0x10-",
		"bytes=\x00-", "bytes", "=", "bytes=-", "bytes=1--2",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, header string) {
		r, ok := parseRange([]string{header})
		if !ok {
			return
		}
		if r.first < 0 || (r.last != -1 && r.last < r.first) {
			t.Fatalf("parseRange(%q) = %+v: not a range to answer", header, r)
		}
		if limit := r.limit(); limit < 0 || (limit == 0 && r.last != -1 && r.last != 1<<63-1) {
			t.Fatalf("parseRange(%q) = %+v: limit %d", header, r, limit)
		}
		again := fmt.Sprintf("bytes=%d-", r.first)
		if r.last >= 0 {
			again += fmt.Sprint(r.last)
		}
		if r2, ok := parseRange([]string{again}); !ok || r2 != r {
			t.Fatalf("parseRange(%q) = %+v, but %q parses to %+v, %v", header, r, again, r2, ok)
		}
	})
}
