//go:build !unix

package server

import "net"

// listen opens a TCP listener on addr; see listen_unix.go for why Unix
// systems add SO_REUSEPORT.
func listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
