package agent

import (
	"context"
	"fmt"
	"io"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// serveFirst answers a first-call frame when the host opens the session
// with one (agentapi/first.go: a restored guest's identity and first
// command, without running any yamux, net/http or encoding/json decoding
// code, which a restored TCG guest would translate afresh), and returns
// the connection the session goes on with: the same bytes, the peeked
// first byte put back when it was no frame. An error ends the session.
func (s *Agent) serveFirst(ctx context.Context, conn io.ReadWriteCloser) (io.ReadWriteCloser, error) {
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	var magic [len(agentapi.FirstMagic)]byte
	if _, err := io.ReadFull(conn, magic[:1]); err != nil {
		return conn, err
	}
	if magic[0] != agentapi.FirstMagic[0] {
		return &peeked{ReadWriteCloser: conn, b: magic[0], has: true}, nil
	}
	if _, err := io.ReadFull(conn, magic[1:]); err != nil {
		return conn, err
	}
	if string(magic[:]) != agentapi.FirstMagic {
		return conn, fmt.Errorf("first call: unknown frame %q", magic[:])
	}
	req, err := agentapi.ReadFirstRequest(conn)
	if err != nil {
		return conn, err
	}
	st := newSteps(req.Identity.Timings)
	resp, idErr := s.identify(req.Identity, st)
	var reply []byte
	if idErr != nil {
		er := s.errorResponse(idErr)
		reply, err = agentapi.EncodeFirstReply(agentapi.IdentityResponse{}, &er)
	} else {
		reply, err = agentapi.EncodeFirstReply(resp, nil)
	}
	if err != nil {
		return conn, err
	}
	if _, err := conn.Write(reply); err != nil {
		return conn, err
	}
	if req.Exec == nil || idErr != nil {
		return conn, nil // no command, or the identity failed: none runs
	}
	ew := &eventWriter{w: conn}
	noEnd := func() bool { return true }
	if err := s.execute(ctx, *req.Exec, newSteps(req.Exec.Timings), ew, func() func() bool { return noEnd }); err != nil {
		// Refused before it started: the stream is this error event.
		er := s.errorResponse(err)
		ew.write(agentapi.Event{Type: agentapi.EventError, Error: &er})
	}
	return conn, nil
}

// peeked is a connection whose first byte was read already.
type peeked struct {
	io.ReadWriteCloser
	b   byte
	has bool
}

func (p *peeked) Read(b []byte) (int, error) {
	if p.has && len(b) > 0 {
		b[0], p.has = p.b, false
		return 1, nil
	}
	return p.ReadWriteCloser.Read(b)
}
