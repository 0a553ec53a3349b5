package agentapi

import "context"

// Connect dials the client's session when it has none, without a call:
// a guest agent with no host connected polls its port for one
// (internal/agent/listener.go, every 2 ms in a guest that may be saved),
// and under TCG that polling doubles an idle guest's CPU. After a
// Release (a fork's save), the source's host reconnects at once so that
// its guest stops polling, instead of at its next call.
func (c *Client) Connect(ctx context.Context) error {
	if _, err := c.getSession(ctx); err != nil {
		return err
	}
	c.streamDone()
	return nil
}
