package main

import (
	"fmt"
	"time"
)

// printLatency prints the tail latency table and reports whether every
// transport met the goal.
func printLatency(s *scenario, o options, interval time.Duration) bool {
	goal := interval + latencySlack
	fmt.Printf("Tail latency: a line (%d bytes) every %s, %s window\n\n", s.lines.width, o.lineEvery, o.duration)
	fmt.Printf("| transport | followers | lines delivered | p50 | p99 | max | goal p99 ≤ %s |\n| --- | --- | --- | --- | --- | --- | --- |\n", goal)
	met := true
	for _, tr := range []struct {
		name string
		n    int
	}{{"gRPC", o.grpc}, {"REST", o.rest}} {
		l := s.latencies(tr.name)
		if tr.n == 0 || len(l) == 0 {
			continue
		}
		p99 := percentile(l, 99)
		result := "met"
		if p99 > goal {
			result, met = "MISSED", false
		}
		fmt.Printf("| %s | %d | %d | %s | %s | %s | %s |\n", tr.name, tr.n, len(l), ms(percentile(l, 50)), ms(p99), ms(l[len(l)-1]), result)
	}
	fmt.Println()
	return met
}

// printRequests prints the upstream requests per follower-minute of the
// growing and the idle scenario.
func printRequests(run []*scenario, o options) {
	tail, idle := run[0], run[1]
	fmt.Printf("Upstream requests per follower-minute, %d followers (%d gRPC, %d REST) each\n\n", o.grpc+o.rest, o.grpc, o.rest)
	fmt.Printf("| log | window | task-log | full-stages | buildlogd CPU |\n| --- | --- | --- | --- | --- |\n")
	row := func(s *scenario, what, window string, i, j int, cpu string) {
		fmt.Printf("| %s | %s | %.1f | %.1f | %s |\n", what, window,
			s.rate(routeTaskLog, i, j, true, false), s.rate(routeFullStages, i, j, true, false), cpu)
	}
	row(tail, fmt.Sprintf("grows a line every %s", o.lineEvery), "whole "+o.duration.String(), 0, 2, pct(tail.cpuPercent()))
	row(idle, "running, does not grow", "whole "+o.duration.String()+" (backoff ramp included)", 0, 2, pct(idle.cpuPercent()))
	row(idle, "running, does not grow", "second half", 1, 2, "")
	fmt.Println()
}

// printSkipping prints the cost of following on an upstream that ignores
// Range against one that honours it.
func printSkipping(run []*scenario, o options, sent [2]int64) {
	fmt.Printf("One gRPC follower of a running action's log, %s written, then a line every %s; %s window\n\n", size(o.skipSize), o.skipEvery, o.skipDuration)
	fmt.Printf("| upstream | task-log polls/min | full-stages/min | upstream body bytes/min | buildlogd CPU | line latency p50 | p99 |\n| --- | --- | --- | --- | --- | --- | --- |\n")
	var counted float64
	for _, s := range run {
		l := s.latencies("gRPC")
		p50, p99 := "-", "-"
		if len(l) > 0 {
			p50, p99 = ms(percentile(l, 50)), ms(percentile(l, 99))
		}
		body := s.rate(routeTaskLog, 0, 2, false, true)
		counted += body + s.rate(routeFullStages, 0, 2, false, true)
		fmt.Printf("| %s | %.1f | %.1f | %s | %s | %s | %s |\n", s.name,
			s.rate(routeTaskLog, 0, 2, false, false), s.rate(routeFullStages, 0, 2, false, false),
			size(int64(body)), pct(s.cpuPercent()), p50, p99)
	}
	minutes := run[0].marks[2].at.Sub(run[0].marks[0].at).Minutes()
	fmt.Printf("\n(upstreamtest BytesSent over the window: %s/min; counted in front of it, both routes: %s/min)\n", size(int64(float64(sent[1]-sent[0])/minutes)), size(int64(counted)))
}

// percentile returns the p-th percentile of sorted, by the nearest rank.
func percentile(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(i-1, 0)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

func pct(v float64) string { return fmt.Sprintf("%.2f%%", v) }

func size(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
