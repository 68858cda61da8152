package server

import (
	"context"
	"log/slog"
	"maps"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// The in-process marker, even with the right secret, counts only on calls
// through the in-process server: a network caller that learnt it gains
// nothing.
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

// Only calls through the in-process server get the in-process AuthInfo;
// calls over a network connection to a server with the same options never
// do.
func TestOnlyInProcessCallsAreMarked(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	seen := map[string]bool{} // server → the call looked in-process
	record := func(name string) grpc.UnaryServerInterceptor {
		return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			p, _ := peer.FromContext(ctx)
			mu.Lock()
			seen[name] = isInprocCall(ctx) && isInproc(p.AuthInfo)
			mu.Unlock()
			return h(ctx, req)
		}
	}
	network := grpc.NewServer(grpc.ChainUnaryInterceptor(record("network")))
	inproc := newInprocServer(callHooks{unary: []grpc.UnaryServerInterceptor{record("inproc")}})
	healthpb.RegisterHealthServer(network, health.NewServer())
	healthpb.RegisterHealthServer(inproc, health.NewServer())
	defer network.Stop()
	defer inproc.Stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go network.Serve(ln)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	for name, cc := range map[string]grpc.ClientConnInterface{"network": conn, "inproc": &inprocChannel{server: inproc}} {
		if _, err := healthpb.NewHealthClient(cc).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := map[string]bool{"network": false, "inproc": true}; !maps.Equal(seen, want) {
		t.Errorf("calls marked in-process: %v, want %v", seen, want)
	}
}

func isInproc(info credentials.AuthInfo) bool {
	_, ok := info.(inprocAuthInfo)
	return ok
}
