package supervisor

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/unixsock"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// countingSupervisor serves PathTidy on dir's supervisor socket (202, as
// the real route does) and reports each connection's state changes.
func countingSupervisor(t *testing.T) (vmdir.Dir, <-chan http.ConnState) {
	t.Helper()
	dir := vmdir.Dir(t.TempDir())
	ln, err := unixsock.Listen(dir.Path(vmdir.SupervisorSock))
	if err != nil {
		t.Fatal(err)
	}
	states := make(chan http.ConnState, 16)
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathTidy, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: headerTimeout,
		ConnState: func(_ net.Conn, s http.ConnState) { states <- s }}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return dir, states
}

// next returns the next connection state change (failing after a bound
// no healthy run comes near).
func next(t *testing.T, states <-chan http.ConnState) http.ConnState {
	t.Helper()
	select {
	case s := <-states:
		return s
	case <-time.After(30 * time.Second):
		t.Fatal("no connection state change")
		return 0
	}
}

// TestDialAhead: the connection is dialled before any request, and the
// request goes over it (no second connection); one never used is closed
// by Close; one older than dialAheadMaxAge is not used (the server may
// close it under the request): the request dials anew and still succeeds.
func TestDialAhead(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir, states := countingSupervisor(t)

	c := DialAhead(dir)
	if s := next(t, states); s != http.StateNew {
		t.Fatalf("before any request: state %v, want a new connection", s)
	}
	if err := c.Tidy(ctx, TidyRequest{MaxCount: 1}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []http.ConnState{http.StateActive, http.StateIdle} {
		if s := next(t, states); s != want {
			t.Fatalf("request: state %v, want %v (a second connection?)", s, want)
		}
	}
	c.Close()
	if s := next(t, states); s != http.StateClosed {
		t.Fatalf("after Close: state %v, want closed", s)
	}

	unused := DialAhead(dir)
	if s := next(t, states); s != http.StateNew {
		t.Fatalf("unused client: state %v, want new", s)
	}
	unused.Close()
	if s := next(t, states); s != http.StateClosed {
		t.Fatalf("unused client after Close: state %v, want closed", s)
	}

	old := dialAheadMaxAge
	dialAheadMaxAge = 0
	defer func() { dialAheadMaxAge = old }()
	stale := DialAhead(dir)
	defer stale.Close()
	if s := next(t, states); s != http.StateNew {
		t.Fatalf("stale client: state %v, want new", s)
	}
	if err := stale.Tidy(ctx, TidyRequest{MaxCount: 1}); err != nil {
		t.Fatal(err)
	}
	var seen []http.ConnState
	for len(seen) < 4 {
		seen = append(seen, next(t, states))
	}
	var closed, fresh int
	for _, s := range seen {
		switch s {
		case http.StateClosed:
			closed++
		case http.StateNew:
			fresh++
		}
	}
	if closed != 1 || fresh != 1 {
		t.Fatalf("stale connection: states %v, want it closed and a new one dialled", seen)
	}
}
