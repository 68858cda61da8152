package upstreamtest

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Action is a build action that may still be running: its log grows while
// it runs, and the full-stages endpoint reports its state.
type Action struct {
	// Log is how the log is served: ContentType, FileName, OmitLength,
	// IgnoreRange, ETag as for AddLog. Log.Size (or len(Log.Content)) is
	// the size the log has when the action finishes by itself. A set ETag
	// is served as `"<etag>-<size>"`, so that it changes as the log grows.
	Log Log
	// Step and Every, when both positive, grow the log by itself: Step
	// bytes every Every, counted from AddAction (computed from the clock
	// when a request arrives: no goroutine), until it reaches its final
	// size; the action then finishes by itself. Zero: it grows only by
	// Grow, and finishes only by Finish.
	Step  int64
	Every time.Duration
	// Restart, with Step and Every: Pause after finishing, the action
	// starts over with an empty log and runs again, for ever (the demo's
	// always-running record). Ignored without Step and Every.
	Restart bool
	Pause   time.Duration
	// RunningStatus is the status word while the action runs (default
	// "running"); FinalStatus once it finished (default "success").
	RunningStatus, FinalStatus string
	// NoFinishTime leaves finish_time empty even once finished: only the
	// status word tells.
	NoFinishTime bool
	// Sequence is the stage's "sequence" in full-stages; 0: the N of a task
	// name "stageN" (0 for other names).
	Sequence int
	// StageKey is the stage's key in the build_stages map; "" gives a
	// stable key unrelated to the task name (a uuid-like id derived from
	// record and task), so clients must match by sequence.
	StageKey string
}

// RunningAction drives an action added with [Server.AddAction]. Its state
// is brought up to date from the clock whenever it is looked at, by a
// request or a method. Safe for concurrent use.
type RunningAction struct {
	a       Action // as added; Log.Content is the action's own copy
	full    int64  // the size of a run that finishes by itself
	created time.Time

	mu         sync.Mutex
	size       int64     // the log's current size
	final      int64     // the size the current run finishes at
	runStart   time.Time // when the current run started
	ticks      int64     // Every periods of the current run already counted
	finished   bool
	finishedAt time.Time
}

// runningState is what the server knows about running actions. Guarded by
// Server.mu.
type runningState struct {
	actions map[logKey]*RunningAction
	// epoch is when the server started: the logs of AddLog are reported as
	// having finished then.
	epoch time.Time
}

// AddAction makes the server serve a's log for (recordID, taskName), at
// both log levels, starting empty (or with what Step/Every gave by the time
// a request arrives), and list it in full-stages as running. It replaces a
// log or an action added before for the same task, as AddLog replaces it in
// turn. It returns a handle for the test to drive it.
func (s *Server) AddAction(recordID, taskName string, a Action) *RunningAction {
	r := newRunningAction(a, time.Now())
	key := logKey{recordID, taskName}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running.actions == nil {
		s.running.actions = map[logKey]*RunningAction{}
	}
	s.running.actions[key] = r
	delete(s.logs, key)
	return r
}

// newRunningAction returns a's state as it starts at now.
func newRunningAction(a Action, now time.Time) *RunningAction {
	full := max(a.Log.Size, 0)
	if a.Log.Content != nil {
		a.Log.Content = bytes.Clone(a.Log.Content)
		full = int64(len(a.Log.Content))
	}
	return &RunningAction{a: a, full: full, created: now, final: full, runStart: now}
}

// lookupLog returns the log to serve for (recordID, taskName): a running
// action's current snapshot, or a log of AddLog. The caller holds s.mu.
func (s *Server) lookupLog(recordID, taskName string) (Log, bool) {
	key := logKey{recordID, taskName}
	if r, ok := s.running.actions[key]; ok {
		return r.snapshot(), true
	}
	log, ok := s.logs[key]
	return log, ok
}

// Grow appends n more bytes to the log, never past its final size. With
// Step and Every, reaching the final size finishes the action; without,
// only Finish does. Growing a finished action does nothing.
func (r *RunningAction) Grow(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.advance(now)
	if r.finished || n <= 0 {
		return
	}
	r.size += min(n, r.final-r.size)
	if r.auto() && r.size == r.final {
		r.finish(now)
	}
}

// Finish makes the action finish now, its log as it is now: the final size
// becomes the current size. With Restart, the pause starts now.
func (r *RunningAction) Finish() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.advance(now)
	if !r.finished {
		r.final = r.size
		r.finish(now)
	}
}

// Truncate makes the log n bytes long when it is longer (a log that
// shrinks, for tests of LOG_CHANGED); a longer n changes nothing. A running
// action then grows again from there, with the same bytes as before; a
// finished one stays finished at its new size.
func (r *RunningAction) Truncate(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.advance(time.Now())
	r.size = min(r.size, max(n, 0))
	if r.finished {
		r.final = r.size
	}
}

// Size returns the log's current size in bytes.
func (r *RunningAction) Size() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.advance(time.Now())
	return r.size
}

// Finished reports whether the action has finished (during the Pause of
// an action that restarts, too).
func (r *RunningAction) Finished() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.advance(time.Now())
	return r.finished
}

// auto reports whether the log grows by itself.
func (r *RunningAction) auto() bool { return r.a.Step > 0 && r.a.Every > 0 }

func (r *RunningAction) finish(at time.Time) {
	r.finished, r.finishedAt = true, at
}

// advance brings the state up to now: the growth by Step every Every since
// the last look, the finish it leads to, and restarts after Pause, as many
// runs as fit. Each run lasts at least one Every, so the loop ends. The
// caller holds r.mu.
func (r *RunningAction) advance(now time.Time) {
	for {
		if r.finished {
			next := r.finishedAt.Add(r.a.Pause)
			if !r.a.Restart || !r.auto() || now.Before(next) {
				return
			}
			r.size, r.final, r.ticks, r.runStart = 0, r.full, 0, next
			r.finished, r.finishedAt = false, time.Time{}
		}
		if !r.auto() {
			return
		}
		due := int64(now.Sub(r.runStart) / r.a.Every)
		need := max(1, (r.final-r.size+r.a.Step-1)/r.a.Step) // periods left until the end
		if due-r.ticks < need {
			r.size += (due - r.ticks) * r.a.Step
			r.ticks = due
			return
		}
		r.ticks += need
		r.size = r.final
		r.finish(r.runStart.Add(time.Duration(r.ticks) * r.a.Every))
	}
}

// snapshot returns the log as it is now, served as a Log of that size. The
// caller may hold Server.mu.
func (r *RunningAction) snapshot() Log {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.advance(time.Now())
	log := r.a.Log
	if log.Content != nil {
		log.Content = log.Content[:r.size:r.size]
	} else {
		log.Size = r.size
	}
	if log.ETag != "" {
		log.ETag = growingETag(log.ETag, r.size)
	}
	return log
}

// actionState is what full-stages reports of an action.
type actionState struct {
	created, started, finished time.Time // finished: zero while running
	status                     string
	running                    bool
}

// state returns the action's state now.
func (r *RunningAction) state() actionState {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.advance(time.Now())
	st := actionState{created: r.created, started: r.runStart, running: !r.finished}
	if r.finished {
		st.status = finalWord(r.a.FinalStatus)
		if !r.a.NoFinishTime {
			st.finished = r.finishedAt
		}
	} else {
		st.status = r.a.RunningStatus
		if st.status == "" {
			st.status = "running"
		}
	}
	return st
}

func finalWord(status string) string {
	if status == "" {
		return "success"
	}
	return status
}

// growingETag returns the ETag of a log version of size bytes: the opaque
// tag with the size appended, quoted, keeping a weak tag's W/ prefix.
func growingETag(tag string, size int64) string {
	opaque, weak := strings.CutPrefix(tag, "W/")
	prefix := ""
	if weak {
		prefix = "W/"
	}
	return fmt.Sprintf(`%s"%s-%d"`, prefix, strings.Trim(opaque, `"`), size)
}
