package service

import (
	"errors"
	"time"
)

// The caller idle timeout (--caller-idle-timeout): a download whose caller
// accepts no bytes for that long, while a chunk it was handed waits to be
// written, is interrupted, and its download slot freed.

// startIdle starts the caller idle timeout as a chunk is handed out: when
// it fires before the caller asks for the next one (its write of this one
// is blocked), the write is interrupted.
func (d *Download) startIdle() {
	if d.s.callerIdle <= 0 || d.req.Interrupt == nil {
		return
	}
	if d.idle == nil {
		d.idle = time.AfterFunc(d.s.callerIdle, func() {
			d.idleMu.Lock()
			defer d.idleMu.Unlock()
			if !d.idleClosed {
				d.idleFired = true
				d.req.Interrupt()
				if d.lentPump != nil {
					d.lentPump.abort(errCallerIdle) // Next returns callerIdleError
				}
			}
		})
		return
	}
	d.idle.Reset(d.s.callerIdle)
}

// waitForCaller waits, with the caller idle timeout still running, while
// the caller holds every byte of the ring: a download riding a shared
// read has a ring of one chunk, which comes back only once the transport
// has written it to the caller. When the timeout fires meanwhile, it ends
// the wait.
func (d *Download) waitForCaller() {
	if d.pump == nil || d.idle == nil {
		return
	}
	d.idleMu.Lock()
	fired := d.idleFired
	if !fired {
		d.lentPump = d.pump
	}
	d.idleMu.Unlock()
	if fired {
		return
	}
	d.pump.waitLent()
	d.idleMu.Lock()
	d.lentPump = nil
	d.idleMu.Unlock()
}

// errCallerIdle ends the wait of waitForCaller.
var errCallerIdle = errors.New("the caller accepted no bytes")

// stopIdle stops the caller idle timeout and reports whether it fired.
func (d *Download) stopIdle() bool {
	if d.idle == nil {
		return false
	}
	d.idle.Stop()
	d.idleMu.Lock()
	defer d.idleMu.Unlock()
	return d.idleFired
}
