package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"

	"google.golang.org/grpc"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/internal/benchproc"
)

// floorEnv, set to a chunk size in bytes, makes this program serve the gRPC
// floor instead of benchmarking: a plain grpc-go server whose
// DownloadTaskLog streams the requested number of bytes from memory in
// messages of that size, with no upstream and nothing else. Read by the
// same Go client as buildlogd's stream, it is the least any gRPC facade
// written with grpc-go can cost on this machine, as the reverse proxy is
// for REST.
const floorEnv = "BUILDLOG_BENCH_GRPC_FLOOR"

// floorService serves a log of the size its record id names (see
// recordID), as bytes of one repeated line: the path's content is not
// checked, only its length.
type floorService struct {
	buildlogv1.UnimplementedBuildLogServiceServer
	chunk []byte
}

func (f *floorService) DownloadTaskLog(req *buildlogv1.DownloadTaskLogRequest, stream grpc.ServerStreamingServer[buildlogv1.DownloadTaskLogResponse]) error {
	var size int64
	if _, err := fmt.Sscanf(req.GetRecordId(), "be0c4000-0000-4000-8000-%012x", &size); err != nil {
		return err
	}
	resp := &buildlogv1.DownloadTaskLogResponse{}
	for sent := int64(0); sent < size; {
		n := min(int64(len(f.chunk)), size-sent)
		resp.Data, resp.Offset = f.chunk[:n], sent
		if err := stream.Send(resp); err != nil {
			return err
		}
		sent += n
	}
	return nil
}

// serveFloor serves the floor until interrupted.
func serveFloor(chunkSize string) error {
	n, err := strconv.Atoi(chunkSize)
	if err != nil || n <= 0 {
		return fmt.Errorf("bad chunk size %q", chunkSize)
	}
	chunk := make([]byte, n)
	for i := range chunk {
		chunk[i] = "floor log line\n"[i%15]
	}
	benchproc.ProfileOnSignal()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	buildlogv1.RegisterBuildLogServiceServer(srv, &floorService{chunk: chunk})
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt)
		<-sig
		srv.Stop()
	}()
	addr := ln.Addr().String()
	line, _ := json.Marshal(map[string]string{"msg": "serving", "grpc": addr, "http": addr})
	os.Stderr.Write(append(line, '\n'))
	return srv.Serve(ln)
}
