package server

import (
	"context"
	"log/slog"
	"net"
	"testing"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/test/bufconn"
)

// The in-process marker, even with the right secret, counts only on
// connections from the in-process listener: a network caller that learnt
// it gains nothing.
func TestMarkerTrustedOnlyInProcess(t *testing.T) {
	t.Parallel()
	a, err := newCallerAuth(false, "", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctxWith := func(info credentials.AuthInfo, marker ...string) context.Context {
		ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{}, AuthInfo: info})
		md := metadata.MD{}
		for _, m := range marker {
			md.Append(callerMarkerKey, m)
		}
		return metadata.NewIncomingContext(ctx, md)
	}
	_, netInfo, err := insecure.NewCredentials().ServerHandshake(nil)
	if err != nil {
		t.Fatal(err)
	}
	inproc := inprocAuthInfo{}
	tests := []struct {
		name string
		ctx  context.Context
		want bool
	}{
		{"in-process with the secret", ctxWith(inproc, a.marker), true},
		{"in-process without a marker", ctxWith(inproc), false},
		{"in-process with a wrong value", ctxWith(inproc, a.marker+"x"), false},
		{"in-process with two values", ctxWith(inproc, a.marker, a.marker), false},
		{"network with the secret", ctxWith(netInfo, a.marker), false},
		{"TLS without client certificate, with the secret", ctxWith(credentials.TLSInfo{}, a.marker), false},
	}
	for _, tt := range tests {
		if got := a.grpcCaller(tt.ctx); got != tt.want {
			t.Errorf("%s: authenticated = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// Only connections accepted from the in-process listener get the
// in-process AuthInfo.
func TestListenerCredsMarkOnlyInProcessConns(t *testing.T) {
	t.Parallel()
	creds := listenerCreds{insecure.NewCredentials()}
	ln := bufconn.Listen(1 << 10)
	defer ln.Close()
	go func() {
		if c, err := ln.Dial(); err == nil {
			defer c.Close()
		}
	}()
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, info, _ := creds.ServerHandshake(raw); isInproc(info) {
		t.Error("a connection not from inprocListener got the in-process AuthInfo")
	}
	if _, info, _ := creds.ServerHandshake(&inprocConn{raw}); !isInproc(info) {
		t.Error("an in-process connection did not get the in-process AuthInfo")
	}
}

func isInproc(info credentials.AuthInfo) bool {
	_, ok := info.(inprocAuthInfo)
	return ok
}
