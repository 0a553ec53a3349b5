package agentapi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// The first call (issue #14). Under TCG a guest restored from a memory
// snapshot translates every instruction it runs afresh (translations are
// not part of a snapshot), and a restored guest's first HTTP request over
// a new yamux session ran the yamux, net/http and encoding/json code of
// the agent for the first time: ~100 ms of a warm start before the
// identity handler even ran. So the first request after a restore is one
// binary frame written straight onto the fresh channel, before any yamux
// session, and so is its answer:
//
//	host -> guest  FirstMagic | u32 length (<= MaxFirstBytes) | request
//	guest -> host  FirstMagic | u32 length (<= MaxFirstBytes) | reply
//	guest -> host  only when the request carried a command and the reply
//	               is a success: the command's events, exactly the NDJSON
//	               stream POST PathExec answers, ending with its exit (or
//	               error) event
//
// after which the same channel carries the usual yamux session (the host
// starts it; the agent sends nothing after the last event until the host
// speaks). The agent tells the frame from a yamux session by the first
// byte: yamux's is its protocol version, 0. Integers are big-endian; a
// string is a u32 length and its bytes.
//
// The request is an IdentityRequest applied as PathIdentity applies it
// (the RNG first, before anything else runs), Inherited included for a
// fork's guest (first_inherited.go), and
// optionally a first command (an ExecRequest without SecretEnv:
// no secret can exist before the identity, which comes first), which the
// agent starts only once the identity is applied and answered. That
// command is not cancelled by the host going away (no stream carries a
// cancel): it is meant for a one-shot guest, whose VM goes with its host.
//
// Everything else, and every later call, uses the HTTP API.

// FirstMagic opens a first-call frame in both directions.
const FirstMagic = "PYF1"

// MaxFirstBytes bounds one first-call frame's body, each way.
const MaxFirstBytes = 64 << 10

// Request flags.
const (
	firstMountWorkspace = 1 << iota
	firstWorkspaceLayered
	firstTimings
	firstHasExec
)

// Reply flags.
const firstMounted = 1

// FirstRequest is what one first-call frame asks for.
type FirstRequest struct {
	Identity IdentityRequest
	// Exec, when not nil, is the guest's first command.
	Exec *ExecRequest
}

// EncodeFirstRequest is the whole frame of r (magic and length included).
func EncodeFirstRequest(r FirstRequest) ([]byte, error) {
	id := r.Identity
	var flags uint32
	if id.Inherited {
		flags |= firstInherited
	}
	if id.MountWorkspace {
		flags |= firstMountWorkspace
	}
	if id.WorkspaceLayered {
		flags |= firstWorkspaceLayered
	}
	if id.Timings {
		flags |= firstTimings
	}
	var e frameEncoder
	e.u32(0) // flags, set below
	e.i64(id.UnixNano)
	e.i64(id.WorkspaceBytes)
	e.str(string(id.Entropy))
	e.str(id.Hostname)
	e.str(id.MachineID)
	e.str(id.MAC)
	if x := r.Exec; x != nil {
		if len(x.SecretEnv) > 0 {
			return nil, errors.New("first call: a first command has no secrets")
		}
		flags |= firstHasExec
		e.i64(x.TimeoutMS)
		e.i64(x.MaxOutputBytes)
		e.bool(x.Timings)
		e.str(x.Cwd)
		e.str(x.Shell)
		e.u32(uint32(len(x.Argv)))
		for _, a := range x.Argv {
			e.str(a)
		}
		e.u32(uint32(len(x.Env)))
		for k, v := range x.Env {
			e.str(k)
			e.str(v)
		}
	}
	binary.BigEndian.PutUint32(e.b, flags)
	return e.frame()
}

// ReadFirstRequest reads the body of a first-call frame whose magic was
// already read from r, exactly (nothing past it), bounded by
// MaxFirstBytes.
func ReadFirstRequest(r io.Reader) (FirstRequest, error) {
	body, err := readFrameBody(r)
	if err != nil {
		return FirstRequest{}, err
	}
	d := frameDecoder{b: body}
	var out FirstRequest
	id := &out.Identity
	flags := d.u32()
	id.UnixNano = d.i64()
	id.WorkspaceBytes = d.i64()
	id.Entropy = []byte(d.str())
	id.Hostname = d.str()
	id.MachineID = d.str()
	id.MAC = d.str()
	id.MountWorkspace = flags&firstMountWorkspace != 0
	id.WorkspaceLayered = flags&firstWorkspaceLayered != 0
	id.Timings = flags&firstTimings != 0
	id.Inherited = flags&firstInherited != 0
	if flags&firstHasExec != 0 {
		x := &ExecRequest{}
		x.TimeoutMS = d.i64()
		x.MaxOutputBytes = d.i64()
		x.Timings = d.bool()
		x.Cwd = d.str()
		x.Shell = d.str()
		if n := d.count(); n > 0 {
			x.Argv = make([]string, 0, n)
			for range n {
				x.Argv = append(x.Argv, d.str())
			}
		}
		if n := d.count(); n > 0 {
			x.Env = make(map[string]string, n)
			for range n {
				k := d.str()
				x.Env[k] = d.str()
			}
		}
		out.Exec = x
	}
	if d.err != nil {
		return FirstRequest{}, fmt.Errorf("first call: %w", d.err)
	}
	if len(d.b) != 0 {
		return FirstRequest{}, fmt.Errorf("first call: %d bytes after the request", len(d.b))
	}
	return out, nil
}

// EncodeFirstReply is the whole reply frame: resp, or err when the
// identity failed (then no command ran). resp.Inherited, when set, goes
// with it unless the frame would be too large (the host then asks).
func EncodeFirstReply(resp IdentityResponse, er *ErrorResponse) ([]byte, error) {
	if resp.Inherited != nil && er == nil {
		b, err := encodeFirstReply(resp, nil)
		if err == nil {
			return b, nil
		}
		resp.Inherited = nil
	}
	return encodeFirstReply(resp, er)
}

func encodeFirstReply(resp IdentityResponse, er *ErrorResponse) ([]byte, error) {
	var e frameEncoder
	if er != nil {
		e.u8(1)
		e.str(er.Error)
		e.str(er.Category)
		e.str(er.Hint)
		return e.frame()
	}
	e.u8(0)
	var flags uint32
	if resp.Workspace {
		flags |= firstMounted
	}
	if resp.Health.FirstInherited {
		flags |= firstKnowsInherited
	}
	if resp.Inherited != nil {
		flags |= firstHasInherited
	}
	e.u32(flags)
	e.str(resp.Timings)
	h := resp.Health
	e.str(h.AgentVersion)
	e.str(h.KernelRelease)
	e.i64(int64(h.VCPUs))
	e.i64(h.MemTotalKiB)
	e.i64(h.UptimeMS)
	e.i64(h.InitStartedMS)
	e.i64(h.RootReadyMS)
	e.i64(h.AgentStartedMS)
	if resp.Inherited != nil {
		e.inherited(resp.Inherited)
	}
	return e.frame()
}

// readFirstReply reads one reply frame (magic included) from r, exactly.
// The echoed names come from req: the guest applied what it was sent.
func readFirstReply(r io.Reader, req IdentityRequest) (IdentityResponse, error) {
	var magic [len(FirstMagic)]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil {
		return IdentityResponse{}, err
	}
	if string(magic[:]) != FirstMagic {
		return IdentityResponse{}, fmt.Errorf("first call: the agent answered %q, not a first-call frame", magic[:])
	}
	body, err := readFrameBody(r)
	if err != nil {
		return IdentityResponse{}, err
	}
	d := frameDecoder{b: body}
	if d.u8() != 0 {
		er := ErrorResponse{Error: d.str(), Category: d.str(), Hint: d.str()}
		if d.err != nil {
			return IdentityResponse{}, fmt.Errorf("first call: %w", d.err)
		}
		return IdentityResponse{}, er.Err(0)
	}
	resp := IdentityResponse{Hostname: req.Hostname, MachineID: req.MachineID, MAC: req.MAC}
	flags := d.u32()
	resp.Workspace = flags&firstMounted != 0
	resp.Timings = d.str()
	h := &resp.Health
	h.AgentVersion = d.str()
	h.KernelRelease = d.str()
	h.VCPUs = int(d.i64())
	h.MemTotalKiB = d.i64()
	h.UptimeMS = d.i64()
	h.InitStartedMS = d.i64()
	h.RootReadyMS = d.i64()
	h.AgentStartedMS = d.i64()
	h.FirstInherited = flags&firstKnowsInherited != 0
	if flags&firstHasInherited != 0 {
		if !req.Inherited {
			return IdentityResponse{}, errors.New("first call: the agent answered what was not asked (inherited)")
		}
		resp.Inherited = d.inherited()
	}
	if d.err != nil {
		return IdentityResponse{}, fmt.Errorf("first call: %w", d.err)
	}
	if req.MountWorkspace && !resp.Workspace {
		return IdentityResponse{}, errors.New("first call: the agent did not mount the workspace")
	}
	return resp, nil
}

func readFrameBody(r io.Reader) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > MaxFirstBytes {
		return nil, fmt.Errorf("first call: a frame of %d bytes (at most %d)", size, MaxFirstBytes)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return body, nil
}

type frameEncoder struct{ b []byte }

func (e *frameEncoder) u8(v uint8)   { e.b = append(e.b, v) }
func (e *frameEncoder) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *frameEncoder) i64(v int64)  { e.b = binary.BigEndian.AppendUint64(e.b, uint64(v)) }
func (e *frameEncoder) str(s string) { e.u32(uint32(len(s))); e.b = append(e.b, s...) }
func (e *frameEncoder) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}

// frame is the body with its magic and length in front.
func (e *frameEncoder) frame() ([]byte, error) {
	if len(e.b) > MaxFirstBytes {
		return nil, fmt.Errorf("first call: a frame of %d bytes (at most %d)", len(e.b), MaxFirstBytes)
	}
	out := make([]byte, 0, 8+len(e.b))
	out = append(out, FirstMagic...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(e.b)))
	return append(out, e.b...), nil
}

// frameDecoder reads a body; the first short read sets err and every
// later read returns zero values.
type frameDecoder struct {
	b   []byte
	err error
}

func (d *frameDecoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.err = errors.New("truncated frame")
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *frameDecoder) u8() uint8 {
	if p := d.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (d *frameDecoder) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *frameDecoder) i64() int64 {
	if p := d.take(8); p != nil {
		return int64(binary.BigEndian.Uint64(p))
	}
	return 0
}

func (d *frameDecoder) bool() bool { return d.u8() != 0 }

func (d *frameDecoder) str() string {
	n := d.u32()
	if uint64(n) > uint64(len(d.b)) {
		d.err = errors.New("truncated frame")
		return ""
	}
	return string(d.take(int(n)))
}

// count is a number of items still to come: each takes at least 4 bytes,
// so a larger count is a lie, refused before anything is allocated.
func (d *frameDecoder) count() int { return d.countOf(4) }

// countOf is count for items of at least size bytes each.
func (d *frameDecoder) countOf(size int) int {
	n := d.u32()
	if uint64(n) > uint64(len(d.b)/size) {
		d.err = errors.New("item count beyond the frame")
		return 0
	}
	return int(n)
}

// First makes a restored guest's first call on a fresh channel (see the
// top of this file): its identity and, when exec is not nil, its first
// command, whose result FirstExec then reads. The client must have no
// session yet; once the identity is answered (and, with a command, once
// FirstExec has read its result), the channel carries the client's
// session. A command that cannot travel in the frame (secrets, a quiet
// report, larger than MaxFirstBytes) is not sent: FirstExec then reports
// none and the caller uses Exec. One attempt, bounded by ctx and d.
func (c *Client) First(ctx context.Context, d time.Duration, req IdentityRequest, exec *ExecRequest) (IdentityResponse, error) {
	frame, err := EncodeFirstRequest(FirstRequest{Identity: req, Exec: exec})
	if err != nil && exec != nil {
		exec = nil
		frame, err = EncodeFirstRequest(FirstRequest{Identity: req})
	}
	if err != nil {
		return IdentityResponse{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return IdentityResponse{}, errdefs.New(errdefs.ErrUnavailable, "", "agent client is closed")
	}
	if c.session != nil || c.first != nil {
		return IdentityResponse{}, errdefs.New(errdefs.ErrFailedPrecondition, "", "first call on a client that already has a session")
	}
	ctx, cancel := withGuestDeadline(ctx, d)
	defer cancel()
	conn, err := c.dial(ctx)
	if err != nil {
		return IdentityResponse{}, errdefs.Wrap(errdefs.ErrUnavailable, err, unavailableHint, "dial agent channel")
	}
	resp, sent, err := firstRoundTrip(ctx, conn, frame, req)
	if err != nil {
		_ = conn.Close()
		refused := ctx.Err() == nil && errdefs.Category(err) != nil // the guest's own answer: nothing ran
		switch {
		case ctx.Err() != nil:
			err = ctxErr(ctx, "first call")
		case !refused:
			err = errdefs.Wrap(errdefs.ErrUnavailable, err, unavailableHint, "first call")
		}
		if sent && exec != nil && !refused {
			err = fmt.Errorf("%w: %w", ErrCommandHandedOver, err)
		}
		return IdentityResponse{}, err
	}
	if exec != nil {
		c.first = &firstExec{conn: conn, req: *exec}
		return resp, nil
	}
	if err := c.startSession(conn); err != nil {
		return IdentityResponse{}, err
	}
	return resp, nil
}

// firstRoundTrip writes frame and reads the reply, both within ctx. The
// channel is cut only once ctx has ended (not by a deadline of its own set
// to ctx's: that timer may fire a moment before ctx's, and the caller,
// seeing ctx still live, would take a caller giving up for a guest that
// failed its restore and discard the snapshot).
func firstRoundTrip(ctx context.Context, conn net.Conn, frame []byte, req IdentityRequest) (_ IdentityResponse, sent bool, _ error) {
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	if _, err := conn.Write(frame); err != nil {
		return IdentityResponse{}, false, err
	}
	resp, err := readFirstReply(conn, req)
	if err != nil {
		return IdentityResponse{}, true, err
	}
	if !stop() {
		return IdentityResponse{}, true, ctx.Err()
	}
	return resp, true, conn.SetDeadline(time.Time{})
}

// ErrCommandHandedOver marks a first call that failed after its whole
// frame, command included, was written, other than by the guest refusing
// the identity: the guest may have applied the identity and started the
// command, so the caller must not run it anywhere else (a cold boot's
// retry would run it twice).
var ErrCommandHandedOver = errors.New("the command was handed to the restored guest and may have started")

// firstExec is a first command whose events are still on the channel.
type firstExec struct {
	conn net.Conn
	req  ExecRequest
}

// FirstExec reads the result of the command First carried, as Exec
// returns one (same bounds, same output callback); ok is false when
// First carried none (call Exec). A call of any other kind before it
// abandons the command's result.
func (c *Client) FirstExec(ctx context.Context, onOutput func(stream string, p []byte)) (res ExecResult, ok bool, err error) {
	c.mu.Lock()
	f := c.first
	c.first = nil
	c.mu.Unlock()
	if f == nil {
		return ExecResult{}, false, nil
	}
	if f.req.TimeoutMS > 0 {
		var cancel context.CancelFunc
		ctx, cancel = withGuestDeadline(ctx, time.Duration(f.req.TimeoutMS)*time.Millisecond+execGrace)
		defer cancel()
	}
	stop := context.AfterFunc(ctx, func() { _ = f.conn.SetDeadline(time.Now()) })
	res, err = DecodeExecStream(f.conn, f.req.MaxOutputBytes, onOutput)
	if !stop() || ctx.Err() != nil {
		_ = f.conn.Close()
		return ExecResult{}, true, ctxErr(ctx, "exec")
	}
	if err != nil {
		_ = f.conn.Close()
		return ExecResult{}, true, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.session != nil {
		_ = f.conn.Close()
		return res, true, nil
	}
	return res, true, c.startSession(f.conn)
}
