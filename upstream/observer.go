package upstream

import "time"

// Observer is told what the client does, for metrics. Its methods are
// called synchronously from the goroutine doing the work, so they must be
// cheap and safe for concurrent use. Nothing passed to them holds a secret.
type Observer interface {
	// Exchange reports one upstream HTTP request: the response's status
	// (0 when none arrived: a connection error or timeout), its error_code
	// for an error answer (empty otherwise) and the time to response headers.
	Exchange(status int, errorCode string, elapsed time.Duration)
	// Retry reports a request retried before any byte reached the caller,
	// with a short reason such as "503", "CB.00060100" or "connect".
	Retry(reason string)
	// Resume reports a broken log body resumed transparently at offset.
	Resume(offset int64)
}

// WithObserver sets the client's observer; the default observes nothing.
func WithObserver(o Observer) Option {
	return func(c *Client) { c.observer = o }
}

// nopObserver is the default Observer.
type nopObserver struct{}

func (nopObserver) Exchange(int, string, time.Duration) {}
func (nopObserver) Retry(string)                        {}
func (nopObserver) Resume(int64)                        {}
