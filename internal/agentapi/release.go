package agentapi

import (
	"context"
	"sync"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Release ends the client's session so that its guest can be saved with
// no host connected (a live save for a fork, vmm.LiveSaver): the guest
// agent sees its host go away and waits for the next one, which is the
// state every copy restored from the save must start in (its new host
// then connects at once, as to a warm-started guest).
//
// It does so only when no stream is open: idle HTTP connections are
// closed first, and a client with a call in flight (or a spliced call, or
// an attached stream) is left as it is, ok false, because ending its
// session would fail that call. From a release until resume is called,
// calls wait (within their own deadlines) instead of dialling the guest
// again; after resume they dial a new session. resume may be called more
// than once, and also when ok is false. Only a direct client (NewClient)
// has a session to release.
func (c *Client) Release() (ok bool, resume func()) {
	// Outside c.mu: closing a connection counts its stream done.
	c.http.CloseIdleConnections()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.held != nil || c.streams.Load() > 0 {
		return false, func() {}
	}
	held := make(chan struct{})
	c.held = held
	if c.session != nil {
		_ = c.session.Close()
		_ = c.conn.Close()
		c.session, c.conn = nil, nil
	}
	return true, sync.OnceFunc(func() {
		c.mu.Lock()
		if c.held == held {
			c.held = nil
		}
		c.mu.Unlock()
		close(held)
	})
}

// waitHeld waits, called with c.mu held (and letting go of it while
// waiting), until no Release holds the client.
func (c *Client) waitHeld(ctx context.Context) error {
	for c.held != nil {
		held := c.held
		c.mu.Unlock()
		select {
		case <-held:
			c.mu.Lock()
		case <-ctx.Done():
			c.mu.Lock()
			return errdefs.Wrap(errdefs.ErrUnavailable, ctx.Err(), unavailableHint, "wait for the agent session (the guest is being saved)")
		}
	}
	return nil
}

// streamDone counts a stream of getSession closed.
func (c *Client) streamDone() { c.streams.Add(-1) }
