package gateway

import (
	"strconv"
	"strings"
)

// byteRange is the Range of a request: from first to last inclusive, or to
// the end of the log when last is -1.
type byteRange struct {
	first, last int64
}

// parseRange parses the Range header values the mirror answers: a single
// "bytes=N-" or "bytes=N-M". It reports false for anything else (several
// ranges, a suffix range "bytes=-N", another unit, bad syntax): RFC 9110
// lets a server ignore a Range it does not support, and the whole log is
// sent instead.
func parseRange(values []string) (byteRange, bool) {
	if len(values) != 1 {
		return byteRange{}, false
	}
	unit, spec, ok := strings.Cut(values[0], "=")
	if !ok || !strings.EqualFold(strings.TrimSpace(unit), "bytes") {
		return byteRange{}, false
	}
	firstText, lastText, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return byteRange{}, false
	}
	first, ok := parseBytePos(strings.TrimSpace(firstText))
	if !ok {
		return byteRange{}, false
	}
	r := byteRange{first: first, last: -1}
	if lastText = strings.TrimSpace(lastText); lastText != "" {
		if r.last, ok = parseBytePos(lastText); !ok || r.last < first {
			return byteRange{}, false
		}
	}
	return r, true
}

// parseBytePos parses a non-empty string of ASCII digits that fits an int64.
func parseBytePos(s string) (int64, bool) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// limit returns the service's limit for r: 0 for "to the end".
func (r byteRange) limit() int64 {
	if r.last < 0 || r.last == 1<<63-1 {
		return 0
	}
	return r.last - r.first + 1
}
