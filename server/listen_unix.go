//go:build unix

package server

import (
	"context"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// listen opens a TCP listener on addr with SO_REUSEPORT, so that a
// replacement buildlogd on the same host can bind the same addresses while
// this one drains (as nginx's and Envoy's hot restarts do): the kernel
// spreads new connections over both until this one closes its listeners.
// Linux lets only processes of the same user share a port this way.
func listen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	return lc.Listen(context.Background(), "tcp", addr)
}
