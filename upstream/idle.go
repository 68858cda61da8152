package upstream

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// idleBody enforces the idle timeout on a response body: a timer runs only
// while a Read waits for the upstream, and cancels the request when it
// fires. Close releases the request.
type idleBody struct {
	body    io.ReadCloser
	timeout time.Duration
	timer   *time.Timer
	fired   atomic.Bool
	cancel  context.CancelFunc
}

func newIdleBody(body io.ReadCloser, timeout time.Duration, cancel context.CancelFunc) *idleBody {
	b := &idleBody{body: body, timeout: timeout, cancel: cancel}
	b.timer = time.AfterFunc(time.Hour, func() {
		b.fired.Store(true)
		cancel()
	})
	b.timer.Stop()
	return b
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.timer.Reset(b.timeout)
	n, err := b.body.Read(p)
	b.timer.Stop()
	if err != nil && b.fired.Load() {
		return n, fmt.Errorf("%w (%s)", ErrIdleTimeout, b.timeout)
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	err := b.body.Close()
	b.cancel()
	return err
}
