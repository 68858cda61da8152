package upstream

import (
	"math"
	"strconv"
	"strings"
)

// rangeHeader returns the Range header value for limit bytes from offset
// (limit 0: to the end).
func rangeHeader(offset, limit int64) string {
	if limit <= 0 || limit > math.MaxInt64-offset {
		return "bytes=" + strconv.FormatInt(offset, 10) + "-"
	}
	return "bytes=" + strconv.FormatInt(offset, 10) + "-" + strconv.FormatInt(offset+limit-1, 10)
}

// parseContentRange parses a 206 answer's "bytes first-last/size" (size may
// be "*", returned as -1).
func parseContentRange(v string) (first, last, size int64, ok bool) {
	spec, found := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	span, total, slash := strings.Cut(spec, "/")
	firstStr, lastStr, dash := strings.Cut(span, "-")
	if !found || !slash || !dash {
		return 0, 0, 0, false
	}
	first, err1 := strconv.ParseInt(firstStr, 10, 64)
	last, err2 := strconv.ParseInt(lastStr, 10, 64)
	if err1 != nil || err2 != nil || first < 0 || last < first {
		return 0, 0, 0, false
	}
	size = -1
	if total != "*" {
		var err error
		if size, err = strconv.ParseInt(total, 10, 64); err != nil || size <= last {
			return 0, 0, 0, false
		}
	}
	return first, last, size, true
}

// unsatisfiedRangeSize parses a 416 answer's "bytes */size".
func unsatisfiedRangeSize(v string) (int64, bool) {
	total, ok := strings.CutPrefix(strings.TrimSpace(v), "bytes */")
	if !ok {
		return 0, false
	}
	size, err := strconv.ParseInt(total, 10, 64)
	return size, err == nil && size >= 0
}
