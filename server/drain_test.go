package server

import (
	"testing"
	"time"
)

func TestRESTCallsDrain(t *testing.T) {
	var c restCalls
	if !c.enter() {
		t.Fatal("enter() = false before the shutdown")
	}
	closed := make(chan struct{})
	go func() {
		c.closeAndWait()
		close(closed)
	}()
	// Once closing, no call is admitted (enter may win the race with the
	// goroutine above once, which the loop lets it leave).
	for c.enter() {
		c.leave()
		time.Sleep(time.Millisecond)
	}
	select {
	case <-closed:
		t.Fatal("closeAndWait returned while a call was being served")
	default:
	}
	c.leave()
	<-closed
	c.closeAndWait() // again, with nothing left: returns at once
	if c.enter() {
		t.Fatal("enter() = true after the shutdown")
	}
}
