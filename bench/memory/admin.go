package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// adminStats is what buildlogd's pprof endpoint says of its goroutines and
// memory.
type adminStats struct {
	goroutines                       int
	heapAlloc, heapInuse, stackInuse int64 // runtime.MemStats, after a GC
}

// readAdminStats reads the goroutine count and, after a garbage
// collection, the memory statistics of the buildlogd whose admin listener
// (with --pprof) is at addr.
func readAdminStats(addr string) (adminStats, error) {
	var st adminStats
	g, err := get(addr, "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return st, err
	}
	first, _, _ := strings.Cut(g, "\n")
	if _, err := fmt.Sscanf(first, "goroutine profile: total %d", &st.goroutines); err != nil {
		return st, fmt.Errorf("read the goroutine count from %q: %w", first, err)
	}
	// Two collections: the first only moves what sync.Pools hold (such as
	// the service's rings) to their victim caches, the second frees it.
	if _, err := get(addr, "/debug/pprof/heap?gc=1"); err != nil {
		return st, err
	}
	h, err := get(addr, "/debug/pprof/heap?debug=1&gc=1")
	if err != nil {
		return st, err
	}
	// The text profile ends with runtime.MemStats, one "# Name = value"
	// line each ("# Stack = inuse / sys").
	for line := range strings.SplitSeq(h, "\n") {
		name, v, ok := strings.Cut(strings.TrimPrefix(line, "# "), " = ")
		if !ok {
			continue
		}
		v, _, _ = strings.Cut(v, " ")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch name {
		case "HeapAlloc":
			st.heapAlloc = n
		case "HeapInuse":
			st.heapInuse = n
		case "Stack":
			st.stackInuse = n
		}
	}
	return st, nil
}

// goroutineGroup is goroutines with the same stack.
type goroutineGroup struct {
	count  int
	frames []string // innermost first, the runtime's own left out
}

// readGoroutineGroups returns the largest groups of goroutines with the
// same stack.
func readGoroutineGroups(addr string) ([]goroutineGroup, error) {
	g, err := get(addr, "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return nil, err
	}
	var groups []goroutineGroup
	for block := range strings.SplitSeq(g, "\n\n") {
		sc := bufio.NewScanner(strings.NewReader(block))
		var gr goroutineGroup
		for sc.Scan() {
			line := sc.Text()
			if n, _, ok := strings.Cut(line, " @ "); ok && gr.count == 0 {
				gr.count, _ = strconv.Atoi(n)
				continue
			}
			// "#\t0x4a1b2c\tpackage.function+0x12\tfile.go:12"
			f := strings.Split(line, "\t")
			if len(f) < 3 || strings.HasPrefix(f[2], "runtime.") || strings.HasPrefix(f[2], "internal/") {
				continue
			}
			name, _, _ := strings.Cut(f[2], "+")
			if len(gr.frames) < 4 {
				gr.frames = append(gr.frames, name)
			}
		}
		if gr.count > 0 {
			groups = append(groups, gr)
		}
	}
	slices.SortFunc(groups, func(a, b goroutineGroup) int { return b.count - a.count })
	return groups[:min(len(groups), 8)], nil
}

// saveProfiles writes buildlogd's heap profile (after two collections, as
// in readStats, so that what sync.Pools hold is not counted) and 10 s of
// its CPU profile into a new directory, and returns it.
func saveProfiles(addr string) (string, error) {
	dir, err := os.MkdirTemp("", "buildlog-followers-pprof")
	if err != nil {
		return "", err
	}
	for _, p := range []struct{ name, path string }{
		{"cpu.pprof", "/debug/pprof/profile?seconds=10"}, // first, while nothing else runs
		{"goroutine.pprof", "/debug/pprof/goroutine"},
		{"goroutines.txt", "/debug/pprof/goroutine?debug=1"},
		{"", "/debug/pprof/heap?gc=1"},
		{"heap.pprof", "/debug/pprof/heap?gc=1"},
	} {
		b, err := get(addr, p.path)
		if err != nil {
			return "", err
		}
		if p.name == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, p.name), []byte(b), 0o644); err != nil {
			return "", err
		}
	}
	return dir, nil
}

func get(addr, path string) (string, error) {
	c := http.Client{Timeout: time.Minute}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: HTTP %d", path, resp.StatusCode)
	}
	return string(b), nil
}
