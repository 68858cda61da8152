package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// The demo's token and sample records.
const (
	demoToken = "demo-token"

	demoRecordSmall   = "3f2a9c1e-7b4d-4e8a-9c6f-1d2e3f4a5b6c"
	demoRecordLarge   = "8b7c6d5e-4f3a-4b2c-9d1e-0f9e8d7c6b5a"
	demoRecordRunning = "5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a"
)

// The always-running action of demoRecordRunning: it grows by
// demoRunningLines generated lines every demoRunningEvery, finishes after
// demoRunningSteps steps (about 250 KiB in 100 s), pauses and starts over.
const (
	demoRunningLines = 8
	demoRunningSteps = 400
	demoRunningEvery = 250 * time.Millisecond
	demoRunningPause = 15 * time.Second
)

// demoLog is the first action of the small sample record: a short, readable
// build log.
const demoLog = `[2026-11-26 09:14:02.117] [INFO] Build action "stage1" (Maven build) started on agent cn-north-4-pool-07
[2026-11-26 09:14:02.341] [INFO] Checking out https://codehub.example.com/team/payments.git at 5f2c9a1
[2026-11-26 09:14:05.902] [INFO] Using JDK 17.0.15, Apache Maven 3.8.7
[2026-11-26 09:14:06.015] [INFO] mvn -B -s settings.xml package -DskipITs
[2026-11-26 09:14:19.660] [INFO] [INFO] Building payments-service 2.14.0
[2026-11-26 09:14:41.208] [INFO] [INFO] Tests run: 412, Failures: 0, Errors: 0, Skipped: 3
[2026-11-26 09:14:44.873] [INFO] [INFO] BUILD SUCCESS
[2026-11-26 09:14:44.874] [INFO] [INFO] Total time:  38.772 s
[2026-11-26 09:14:45.120] [INFO] Archived target/payments-service-2.14.0.jar (48.2 MB)
[2026-11-26 09:14:45.121] [INFO] Build action "stage1" finished: SUCCESS
`

// startDemoUpstream starts the simulated upstream with the sample records.
func startDemoUpstream() (*upstreamtest.Server, error) {
	up, err := upstreamtest.Start("127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("start the demo upstream: %w", err)
	}
	up.AddToken(demoToken)
	up.AddLog(demoRecordSmall, "stage1", upstreamtest.Log{Content: []byte(demoLog), ContentType: "text/plain; charset=utf-8", FileName: "stage1.log"})
	up.AddLog(demoRecordSmall, "stage2", upstreamtest.Log{Size: 10 << 20, OmitLength: true})
	up.AddLog(demoRecordLarge, "stage1", upstreamtest.Log{Size: 1 << 30})
	// Whole lines at each step, so that a follower sees complete lines.
	line := int64(bytes.IndexByte(upstreamtest.Generate(1<<10, "INFO", "stage1"), '\n') + 1)
	step := demoRunningLines * line
	up.AddAction(demoRecordRunning, "stage1", upstreamtest.Action{
		Log:     upstreamtest.Log{Size: demoRunningSteps * step, ContentType: "text/plain; charset=utf-8"},
		Step:    step,
		Every:   demoRunningEvery,
		Restart: true,
		Pause:   demoRunningPause,
	})
	return up, nil
}

// printDemo prints commands that exercise the demo server.
func printDemo(w io.Writer, grpcAddr, httpAddr, adminAddr net.Addr) {
	g, h := dialable(grpcAddr), dialable(httpAddr)
	r := strings.NewReplacer("{grpc}", g, "{http}", h, "{token}", demoToken, "{small}", demoRecordSmall, "{large}", demoRecordLarge, "{running}", demoRecordRunning)
	fmt.Fprint(w, r.Replace(`
buildlogd demo: a simulated CodeArts Build upstream is running in-process.
Token: {token}. Sample records:
  {small}  stage1 (a short build log), stage2 (10 MiB, streamed without a size)
  {large}  stage1 (1 GiB, generated on the fly)
  {running}  stage1 (always running: grows every 250 ms to 250 KiB, then restarts after 15 s)

REST mirror (same route as the upstream API):
  curl -sS -H 'X-Auth-Token: {token}' 'http://{http}/v4/{small}/task-log?task_name=stage1'
  curl -sS -H 'X-Auth-Token: {token}' 'http://{http}/v4/{large}/task-log?task_name=stage1&log_level=debug' -o large.log
  curl -sSN -H 'X-Auth-Token: {token}' 'http://{http}/v4/{running}/task-log?task_name=stage1&follow=true'

gRPC with the CLI:
  go run ./cmd/buildlog download --addr {grpc} --token {token} --record-id {small} --task-name stage1
  go run ./cmd/buildlog download --addr {grpc} --token {token} --record-id {large} --task-name stage1 -o large.log
  go run ./cmd/buildlog download --addr {grpc} --token {token} --record-id {running} --task-name stage1 -f

gRPC with grpcurl (server reflection is on; data is base64 in grpcurl's JSON):
  grpcurl -plaintext -H 'x-auth-token: {token}' -d '{"record_id":"{small}","task_name":"stage1"}' {grpc} buildlog.v1.BuildLogService/DownloadTaskLog

`))
	if adminAddr != nil {
		fmt.Fprintf(w, "Admin endpoints: http://%[1]s/metrics, http://%[1]s/readyz, http://%[1]s/healthz\n\n", dialable(adminAddr))
	}
	fmt.Fprint(w, "Press Ctrl-C to stop.\n")
}

// dialable turns a listen address into one a client on this machine can
// dial: an unspecified host (":8080") becomes localhost.
func dialable(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}
