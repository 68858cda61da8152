package server

import (
	"sync"

	"google.golang.org/grpc/codes"

	"github.com/buildlog/buildlog/api"
)

// restCalls counts the REST requests being served, for the shutdown to wait
// for: http.Server.Shutdown does not wait for the handlers of h2c streams,
// and such a connection may open a stream after the shutdown began. A
// sync.WaitGroup may not gain a first call while it is waited for, so once
// closed this admits no more calls: they are answered shuttingDown.
type restCalls struct {
	mu     sync.Mutex
	n      int
	closed bool
	idle   chan struct{} // closed when closed and no call is left
}

// shuttingDown is what a REST request that arrives during the shutdown gets.
var shuttingDown = &api.Error{Code: codes.Unavailable, Reason: api.ReasonConnectionClosing,
	Message: "this server is shutting down; retry, and another replica (or this one restarted) will answer"}

// enter admits a call, unless the shutdown began; an admitted call must
// leave.
func (c *restCalls) enter() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.n++
	return true
}

// leave ends a call that enter admitted.
func (c *restCalls) leave() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n--
	if c.closed && c.n == 0 {
		close(c.idle)
	}
}

// closeAndWait admits no more calls and waits until those admitted left.
func (c *restCalls) closeAndWait() {
	c.mu.Lock()
	if !c.closed {
		c.closed, c.idle = true, make(chan struct{})
		if c.n == 0 {
			close(c.idle)
		}
	}
	idle := c.idle
	c.mu.Unlock()
	<-idle
}
