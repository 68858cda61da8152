package server

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Keepalive holds the gRPC server's connection keepalive and age settings.
// In a service mesh or behind an L4 load balancer, MaxConnectionAge makes
// long-lived client connections reconnect now and then, so new replicas get
// their share of calls.
type Keepalive struct {
	// Time is how long a connection may be silent before the server pings
	// the client, and Timeout how long it waits for the answer before it
	// closes the connection.
	Time    time.Duration
	Timeout time.Duration
	// MinTime is the shortest interval between client pings the server
	// tolerates (a client pinging more often is disconnected with
	// ENHANCE_YOUR_CALM). PermitWithoutStream allows client pings on
	// connections with no call in progress, as clients of other languages
	// often keep idle connections warm this way.
	MinTime             time.Duration
	PermitWithoutStream bool
	// MaxConnectionAge is how long a connection may live before the server
	// asks the client to reconnect (GOAWAY); 0 means forever.
	// MaxConnectionAgeGrace is how long calls in progress then have to
	// finish before the connection is closed; 0 means as long as they need.
	MaxConnectionAge      time.Duration
	MaxConnectionAgeGrace time.Duration
}

// serverOptions turns k into gRPC server options. Zero durations keep
// gRPC's defaults (for the connection age, infinity).
func (k Keepalive) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:                  k.Time,
			Timeout:               k.Timeout,
			MaxConnectionAge:      k.MaxConnectionAge,
			MaxConnectionAgeGrace: k.MaxConnectionAgeGrace,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             k.MinTime,
			PermitWithoutStream: k.PermitWithoutStream,
		}),
	}
}
