package supervisor

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// A client whose connection is dialled ahead: a caller that knows it will
// ask the supervisor something once a wait is over (the tidy request after
// a checkpointed exec's command) dials while it waits, so the request
// after the wait is one write and one read on an open connection. The
// dial, the supervisor's accept and its connection goroutine's start were
// on a checkpointed exec's path after its command.

// headerTimeout is how long the supervisor's server waits for a request
// head on a connection, a new one included (http.Server's
// ReadHeaderTimeout): it closes a connection dialled ahead and left
// unused longer.
const headerTimeout = 10 * time.Second

// dialAheadMaxAge is the age past which a connection dialled ahead is not
// used (the request dials anew): well inside headerTimeout, so the server
// never closes it under a request being written.
var dialAheadMaxAge = headerTimeout / 2

// dialAheadTimeout bounds the dial itself.
const dialAheadTimeout = 5 * time.Second

// DialAhead returns a client for the supervisor of dir whose first request
// takes a connection dialled now, in the background (when the dial failed
// or the connection is older than dialAheadMaxAge, the request dials as
// NewClient's does). The caller closes the client (Close) when done with
// it, used or not.
func DialAhead(dir vmdir.Dir) *Client {
	a := &aheadConn{ready: make(chan struct{})}
	go a.dial(dir)
	c := newClient(dir, func(ctx context.Context) (net.Conn, error) {
		if conn := a.take(ctx); conn != nil {
			return conn, nil
		}
		return dialSock(ctx, dir)
	})
	c.release = a.close
	return c
}

// aheadConn is one connection dialled ahead, handed out at most once.
type aheadConn struct {
	ready  chan struct{} // closed once the dial ended
	mu     sync.Mutex
	conn   net.Conn
	at     time.Time // when conn was dialled
	closed bool      // taken or closed: a late dial's connection goes
}

func (a *aheadConn) dial(dir vmdir.Dir) {
	defer close(a.ready)
	ctx, cancel := context.WithTimeout(context.Background(), dialAheadTimeout)
	defer cancel()
	conn, err := dialSock(ctx, dir)
	if err != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		_ = conn.Close()
		return
	}
	a.conn, a.at = conn, time.Now()
}

// take returns the connection dialled ahead, once; nil when there is none
// (or it is too old: then it is closed).
func (a *aheadConn) take(ctx context.Context) net.Conn {
	select {
	case <-a.ready:
	case <-ctx.Done():
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	conn := a.conn
	a.conn, a.closed = nil, true
	if conn != nil && time.Since(a.at) > dialAheadMaxAge {
		_ = conn.Close()
		return nil
	}
	return conn
}

// close closes the connection if it was never taken.
func (a *aheadConn) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	if a.conn != nil {
		_ = a.conn.Close()
		a.conn = nil
	}
}
