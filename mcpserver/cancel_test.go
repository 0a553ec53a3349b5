package mcpserver

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

type blockOut struct {
	Done bool `json:"done"`
}

// TestStdioCancelledRequestGetsNoResponse: after notifications/cancelled
// the handler's context ends (the work stops) and the server writes no
// response for that id; the next request's response is the next line.
func TestStdioCancelledRequestGetsNoResponse(t *testing.T) {
	started, stopped := make(chan struct{}), make(chan struct{})
	block := def(tool{name: "block", title: "Block", description: "Blocks until cancelled; a test tool for request cancellation."},
		func(ctx context.Context, cl *call, _ noIn) (blockOut, string, error) {
			close(started)
			<-ctx.Done()
			close(stopped)
			return blockOut{}, "", errors.New("cancelled")
		})
	p := startStdioWith(t, append(slices.Clone(table), block))
	p.initialize("2025-06-18")
	p.write(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"block","arguments":{}}}`)
	wait := func(ch chan struct{}, what string) {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("the handler never %s", what)
		}
	}
	wait(started, "started")
	// A cancellation for an id that is not in flight changes nothing.
	p.write(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":99}}`)
	p.write(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7,"reason":"user"}}`)
	wait(stopped, "stopped")
	// Give the SDK time to write the (dropped) response before the ping.
	time.Sleep(200 * time.Millisecond)
	r, raw := p.send(`{"jsonrpc":"2.0","id":8,"method":"ping"}`)
	if string(r.ID) != "8" || r.Error != nil {
		t.Fatalf("after the cancellation the next line is %.300s, want the ping's response", raw)
	}
	// Still serving, and id 7's tracking is over: a new request with id 7
	// is answered.
	p.toolsListWorks(7)
}
