package mcpserver

import (
	"context"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Many MCP clients give a tool call 60 s or less, unless progress
// notifications keep arriving (they reset the client's timer). A command
// may run longer only when the call carries a progress token: the server
// then reports output as it comes and, while the command is quiet, a
// heartbeat every heartbeatEvery. Without a token such a call would be
// abandoned by the client half-way, the model would never see its result,
// so it is refused up front with a hint.
const clientDeadlineSeconds = 60

// heartbeatEvery is the quiet-time progress interval; tests shorten it.
var heartbeatEvery = 15 * time.Second

// longCall refuses a timeout beyond the clients' deadline when no progress
// can flow, and otherwise starts the heartbeat; call the returned stop when
// the command is done.
func (cl *call) longCall(ctx context.Context, timeoutSeconds int) (stop func(), err error) {
	if timeoutSeconds <= clientDeadlineSeconds {
		return func() {}, nil
	}
	if cl.p == nil || cl.p.token == nil {
		return nil, errdefs.New(errdefs.ErrInvalidArgument,
			"pass a progressToken in the call's _meta (the server then sends progress at least every 15 s, which keeps clients waiting), "+
				"or use timeout_seconds of 60 or less and split the work; for a long-running process use service_start and read service_logs",
			"timeout_seconds %d is longer than the %d s many MCP clients wait for a tool call without progress notifications, and this call asked for none",
			timeoutSeconds, clientDeadlineSeconds)
	}
	return cl.p.heartbeat(ctx), nil
}

// heartbeat sends "still running" progress every heartbeatEvery until
// stop is called or ctx ends.
func (p *progress) heartbeat(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		start := time.Now()
		t := time.NewTicker(heartbeatEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				p.step(ctx, "still running (%s)", time.Since(start).Round(time.Second))
			}
		}
	}()
	return func() { cancel(); <-done }
}
