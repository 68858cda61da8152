package upstream

import "net/http"

// WithTransportWrapper wraps the client's HTTP transport, for instrumentation
// such as OpenTelemetry's otelhttp.NewTransport. Wrappers apply in order, so
// the last one given sees each request first. The wrapped transport keeps
// the client's timeouts, compression and flow-control settings; the wrapper
// must pass requests on without buffering their bodies.
func WithTransportWrapper(wrap func(http.RoundTripper) http.RoundTripper) Option {
	return func(c *Client) { c.transportWrappers = append(c.transportWrappers, wrap) }
}

// wrapTransport applies the client's transport wrappers to t. The result
// still closes t's idle connections: http.Client.CloseIdleConnections only
// reaches a transport that has the method, and wrappers need not forward it.
func (c *Client) wrapTransport(t *http.Transport) http.RoundTripper {
	if len(c.transportWrappers) == 0 {
		return t
	}
	var rt http.RoundTripper = t
	for _, wrap := range c.transportWrappers {
		rt = wrap(rt)
	}
	return wrappedTransport{RoundTripper: rt, base: t}
}

// wrappedTransport is a wrapped transport that can close the idle
// connections of the transport underneath.
type wrappedTransport struct {
	http.RoundTripper
	base *http.Transport
}

func (w wrappedTransport) CloseIdleConnections() { w.base.CloseIdleConnections() }
