package service

// SharedWaiting counts the downloads that joined a shared read whose
// upstream answer is not in yet.
func SharedWaiting(s *Service) int {
	sh := s.sharing
	sh.mu.Lock()
	defer sh.mu.Unlock()
	n := 0
	for _, l := range sh.logs {
		for _, f := range l.flights {
			if !f.answered() {
				f.mu.Lock()
				n += len(f.members)
				f.mu.Unlock()
			}
		}
	}
	return n
}
