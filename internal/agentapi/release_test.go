package agentapi

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"
)

func healthMux(block chan struct{}) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathHealth, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"agent_version":"v","vcpus":2}`)
	})
	mux.HandleFunc("POST "+PathExec, func(w http.ResponseWriter, r *http.Request) {
		<-block
		_, _ = io.WriteString(w, `{"type":"exit","result":{"exit_code":0}}`+"\n")
	})
	return mux
}

// An idle client lets go of its session (its kept-alive connection
// included), holds calls until resumed, then dials a new session.
func TestReleaseIdle(t *testing.T) {
	c, dials := fakeAgent(t, healthMux(nil))
	if _, err := c.Health(ctx(t)); err != nil {
		t.Fatal(err)
	}
	ok, resume := c.Release()
	if !ok {
		t.Fatal("an idle client was not released")
	}
	c.mu.Lock()
	gone := c.session == nil
	c.mu.Unlock()
	if !gone {
		t.Fatal("the session is still there after a release")
	}
	// Held: a call waits (here until its deadline) instead of dialling.
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := c.Health(short)
	cancel()
	if err == nil || dials.Load() != 1 {
		t.Fatalf("held call: err %v, dials %d; want its deadline without a dial", err, dials.Load())
	}
	// A call waiting when resume comes goes through on a new session.
	done := make(chan error, 1)
	go func() { _, err := c.Health(ctx(t)); done <- err }()
	time.Sleep(20 * time.Millisecond)
	resume()
	resume() // idempotent
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if dials.Load() != 2 {
		t.Fatalf("dials %d, want a second session after resume", dials.Load())
	}
}

// A client with a call in flight keeps its session: releasing it would
// fail the call.
func TestReleaseBusy(t *testing.T) {
	block := make(chan struct{})
	c, dials := fakeAgent(t, healthMux(block))
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx(t), ExecRequest{Argv: []string{"sleep"}}, nil)
		done <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c.streams.Load() > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the exec never opened a stream")
		}
		time.Sleep(time.Millisecond)
	}
	ok, resume := c.Release()
	resume()
	if ok {
		t.Fatal("a client with a call in flight was released")
	}
	close(block)
	if err := <-done; err != nil {
		t.Fatalf("the call in flight failed: %v", err)
	}
	if dials.Load() != 1 {
		t.Fatalf("dials %d: the session was replaced", dials.Load())
	}
	// Once the call ended and its connection went back idle (the HTTP
	// transport returns it a moment after the caller read the body), the
	// client releases.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(time.Millisecond) {
		ok, resume := c.Release()
		resume()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("an idle client was not released after its call ended")
		}
	}
}
