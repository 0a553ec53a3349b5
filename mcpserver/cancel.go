package mcpserver

import (
	"bytes"
	"encoding/json"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// Cancelled requests get no response. On notifications/cancelled the
// go-sdk cancels the handler's context (so the work stops and a VM is
// still removed), but it then writes whatever the handler returned, an
// isError result seconds later. MCP says the receiver SHOULD NOT respond to
// a cancelled request, so the stdio transport drops that response.
//
// Only requests still in flight are tracked: a cancellation for an unknown
// or already answered id is ignored, so the sets stay bounded by the
// requests the SDK is working on.
type cancels struct {
	inflight  map[jsonrpc.ID]bool
	cancelled map[jsonrpc.ID]bool
}

// sawInbound records a request passed on to the SDK, or the cancellation
// of one in flight. The caller holds the filter's lock.
func (c *cancels) sawInbound(msg jsonrpc.Message) {
	req, ok := msg.(*jsonrpc.Request)
	if !ok {
		return
	}
	if c.inflight == nil {
		c.inflight, c.cancelled = map[jsonrpc.ID]bool{}, map[jsonrpc.ID]bool{}
	}
	if req.ID.IsValid() {
		c.inflight[req.ID] = true
		return
	}
	if req.Method != "notifications/cancelled" {
		return
	}
	var p struct {
		RequestID any `json:"requestId"`
	}
	if json.Unmarshal(req.Params, &p) != nil {
		return
	}
	if id, err := jsonrpc.MakeID(p.RequestID); err == nil && c.inflight[id] {
		c.cancelled[id] = true
	}
}

// outbound returns line without the responses to cancelled requests (nil
// when nothing is left) and forgets every request it answers. The caller
// holds the filter's lock.
func (c *cancels) outbound(line []byte) []byte {
	if len(c.inflight) == 0 {
		return line
	}
	trimmed := bytes.TrimSpace(line)
	if len(trimmed) == 0 || trimmed[0] != '[' {
		if c.drop(trimmed) {
			return nil
		}
		return line
	}
	var members []json.RawMessage
	if json.Unmarshal(trimmed, &members) != nil {
		return line
	}
	kept := members[:0]
	for _, m := range members {
		if !c.drop(m) {
			kept = append(kept, m)
		}
	}
	if len(kept) == len(members) {
		return line
	}
	if len(kept) == 0 {
		return nil
	}
	b, err := json.Marshal(kept)
	if err != nil {
		return line
	}
	return append(b, '\n')
}

// drop reports whether raw is the response to a cancelled request; any
// response ends its request's tracking.
func (c *cancels) drop(raw []byte) bool {
	msg, err := jsonrpc.DecodeMessage(raw)
	resp, ok := msg.(*jsonrpc.Response)
	if err != nil || !ok || !c.inflight[resp.ID] {
		return false
	}
	cancelled := c.cancelled[resp.ID]
	delete(c.inflight, resp.ID)
	delete(c.cancelled, resp.ID)
	return cancelled
}
