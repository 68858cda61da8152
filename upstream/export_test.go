package upstream

// IAMWaiters returns how many callers wait for s's token fetch in progress
// (0 when none is), so a test can tell they all share one.
func IAMWaiters(s *IAMTokenSource) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight == nil {
		return 0
	}
	return s.inflight.waiters
}

// SameOrigin is sameOrigin, for its table test.
var SameOrigin = sameOrigin
