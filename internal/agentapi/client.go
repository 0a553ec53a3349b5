package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// DialFunc opens the raw channel to the guest (on the host: the unix socket
// behind the VM's virtio-serial port).
type DialFunc func(ctx context.Context) (net.Conn, error)

const unavailableHint = "the guest agent is not reachable; check that the VM is running and look at its console log"

// Client talks to one guest agent. It dials lazily, once, and runs a yamux
// client session over the channel; each HTTP connection is one yamux stream.
// If the session dies (the channel closed), the next call dials again.
// A Client is safe for concurrent use.
//
// Everything the guest sends is bounded here, in size (bounds.go) and in
// time (every call has a deadline derived from its own timeout), because a
// guest may replace its agent and send anything or nothing.
type Client struct {
	dial DialFunc
	http *http.Client
	// base is prepended to every path: "http://pyro-agent" directly, or the
	// supervisor's proxy prefix when the agent is reached through it.
	base string

	// noKeepAlive: see NewPausableClient.
	noKeepAlive bool

	mu      sync.Mutex
	conn    net.Conn
	session *yamux.Session
	closed  bool
	// streams counts the streams opened and not yet closed (added to
	// under mu, so Release sees every stream getSession handed out;
	// a close counts down without mu, which Close holds while it closes
	// idle connections); held, when not nil, makes new streams wait
	// (release.go).
	streams atomic.Int64
	held    chan struct{}
	// first is a first command whose result is still on the channel
	// (first.go).
	first *firstExec
}

// NewClient returns a Client that reaches the agent through dial.
func NewClient(dial DialFunc) *Client {
	c := &Client{dial: dial, base: "http://pyro-agent"}
	tr := &http.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return c.OpenStream(ctx) },
		DisableCompression:  true,
		MaxIdleConns:        16,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     5 * time.Minute,
		// A guest that accepts a stream and never answers is caught by
		// each call's own deadline; this only bounds the header wait of
		// calls whose deadline is long (exec, service start).
		MaxResponseHeaderBytes: MaxHeaderBytes,
	}
	c.http = &http.Client{Transport: tr, CheckRedirect: noRedirects}
	return c
}

// NewPausableClient is NewClient for a guest that is paused between calls
// (a warm pool's): its session sends no keep-alives, which a paused guest
// cannot answer, so the session is still there when the guest resumes.
// Each call keeps its own deadline.
func NewPausableClient(dial DialFunc) *Client {
	c := NewClient(dial)
	c.noKeepAlive = true
	return c
}

// noRedirects keeps a guest's 3xx reply as its answer: following it would
// let the guest steer the host's call to any path of the socket the host
// dials (through the supervisor, the supervisor's own API).
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// OpenStream opens a new raw stream to the agent (one yamux stream of the
// session, dialled if needed). The supervisor splices host connections to
// such streams; everything else uses the Client's calls.
func (c *Client) OpenStream(ctx context.Context) (net.Conn, error) {
	s, err := c.getSession(ctx)
	if err != nil {
		return nil, err
	}
	done := sync.OnceFunc(c.streamDone)
	st, err := s.OpenStream()
	if err != nil {
		done()
		c.dropSession(s)
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, unavailableHint, "open agent stream")
	}
	return &fullClose{st, done}, nil
}

// fullClose makes Close end a stream both ways at once. yamux's own Close
// only half-closes (it sends FIN) and leaves a blocked Read waiting for the
// guest's side, so a call whose deadline passed would keep waiting for a
// guest that stopped answering. The deadline goes first: Close itself may
// wait for the session's writer. done counts the stream closed (once).
// Handed out as a pointer: callers key maps by the connection
// (internal/pool), and a func field is not comparable.
type fullClose struct {
	*yamux.Stream
	done func()
}

func (s *fullClose) Close() error {
	_ = s.Stream.SetDeadline(time.Now())
	err := s.Stream.Close()
	s.done()
	return err
}

// getSession returns the session, dialled if needed, and counts one
// more stream on it (the caller opens it, and its close or failure
// counts it done: streamDone).
func (c *Client) getSession(ctx context.Context) (*yamux.Session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.waitHeld(ctx); err != nil {
		return nil, err
	}
	if c.closed {
		return nil, errdefs.New(errdefs.ErrUnavailable, "", "agent client is closed")
	}
	if c.session != nil && !c.session.IsClosed() {
		c.streams.Add(1)
		return c.session, nil
	}
	if c.session != nil {
		_ = c.session.Close()
		_ = c.conn.Close()
		c.session, c.conn = nil, nil
	}
	if c.first != nil {
		// A first command's result nobody read (first.go): abandoned.
		_ = c.first.conn.Close()
		c.first = nil
	}
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, unavailableHint, "dial agent channel")
	}
	if err := c.startSession(conn); err != nil {
		return nil, err
	}
	c.streams.Add(1)
	return c.session, nil
}

// startSession runs the client's yamux session over conn (c.mu held).
func (c *Client) startSession(conn net.Conn) error {
	cfg := clientConfig()
	if c.noKeepAlive {
		cfg.EnableKeepAlive = false
	}
	s, err := yamux.Client(conn, cfg)
	if err != nil {
		_ = conn.Close()
		return errdefs.Wrap(errdefs.ErrUnavailable, err, "", "start agent session")
	}
	c.conn, c.session = conn, s
	return nil
}

func (c *Client) dropSession(s *yamux.Session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.session == s {
		_ = s.Close()
		_ = c.conn.Close()
		c.session, c.conn = nil, nil
	}
}

func clientConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.KeepAliveInterval = 30 * time.Second
	// A TCG guest under load can be slow to drain the channel.
	cfg.ConnectionWriteTimeout = 30 * time.Second
	cfg.StreamOpenTimeout = 0 // a booting guest acknowledges streams late
	cfg.MaxStreamWindowSize = StreamWindow
	return cfg
}

// Close tears down the session and the channel. Calls after Close fail with
// errdefs.ErrUnavailable.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.http.CloseIdleConnections()
	if c.first != nil {
		_ = c.first.conn.Close()
		c.first = nil
	}
	var err error
	if c.session != nil {
		err = c.session.Close()
		_ = c.conn.Close()
		c.session, c.conn = nil, nil
	}
	return err
}

// NewProxiedClient returns a Client that reaches the agent through an HTTP
// proxy (the VM's supervisor) serving the agent API under prefix. Each HTTP
// connection is one call of dial; there is no yamux session on this side.
// The bounds and deadlines are the same as for a direct Client: the
// supervisor passes the guest's bytes through untouched.
func NewProxiedClient(dial DialFunc, prefix string) *Client {
	c := &Client{dial: dial, base: "http://pyro-supervisor" + prefix}
	c.http = &http.Client{Transport: &http.Transport{
		DialContext:            func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		DisableCompression:     true,
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        30 * time.Second,
		MaxResponseHeaderBytes: MaxHeaderBytes,
	}, CheckRedirect: noRedirects}
	return c
}

// Health asks the agent how the guest is, within HealthTimeout.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.jsonCall(ctx, HealthTimeout, http.MethodGet, PathHealth, nil, &h)
	return h, err
}

// WaitReady retries Health until it succeeds or ctx ends. The caller bounds
// ctx and watches the VMM for an early exit.
func (c *Client) WaitReady(ctx context.Context) (Health, error) {
	var lastErr error
	for {
		// A single attempt normally just waits for the booting guest (bytes
		// sent early are kept); the bound covers an agent that restarted.
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		h, err := c.Health(actx)
		cancel()
		if err == nil {
			return h, nil
		}
		if ctx.Err() == nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr == nil {
				lastErr = ctx.Err()
			}
			return Health{}, errdefs.Wrap(errdefs.ErrUnavailable, lastErr, "the guest did not boot in time; look at its console log", "wait for guest agent")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Exec runs req in the guest and returns its result once it exits.
// onOutput, if not nil, is called with each chunk of output as it arrives
// (stream is EventStdout or EventStderr), from the calling goroutine.
// The result's Stdout and Stderr are assembled here from the same events,
// each capped at req.MaxOutputBytes (DefaultMaxOutputBytes when 0) and
// marked truncated beyond it, whatever the guest claims.
//
// With req.TimeoutMS set, the call fails with ErrUnavailable when the guest
// has not finished ExecGrace after that timeout (a hung guest); without it
// only ctx bounds the call. Cancelling ctx aborts the request; the guest
// then kills the process group.
func (c *Client) Exec(ctx context.Context, req ExecRequest, onOutput func(stream string, p []byte)) (ExecResult, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return ExecResult{}, fmt.Errorf("encode exec request: %w", err)
	}
	if req.TimeoutMS > 0 {
		var cancel context.CancelFunc
		ctx, cancel = withGuestDeadline(ctx, time.Duration(req.TimeoutMS)*time.Millisecond+execGrace)
		defer cancel()
	}
	resp, err := c.do(ctx, http.MethodPost, PathExec, body)
	if err != nil {
		return ExecResult{}, err
	}
	defer resp.Body.Close()
	res, err := DecodeExecStream(resp.Body, req.MaxOutputBytes, onOutput)
	if ctx.Err() != nil {
		// Either way the command is gone: the guest kills it when we
		// leave, and a late exit event is no result of ours.
		return ExecResult{}, ctxErr(ctx, "exec")
	}
	return res, err
}

// Shutdown asks the guest to power off. It returns once the agent has
// acknowledged; the VMM exits shortly after. A channel that drops during
// the request is reported as ErrUnavailable: the caller decides by
// watching the VMM process.
func (c *Client) Shutdown(ctx context.Context) error {
	ctx, cancel := withGuestDeadline(ctx, callTimeout)
	defer cancel()
	resp, err := c.do(ctx, http.MethodPost, PathShutdown, nil)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, MaxReplyBytes))
	return resp.Body.Close()
}

// jsonCall sends in (if not nil) as JSON and decodes a 2xx reply of at
// most MaxReplyBytes into out, all within timeout.
func (c *Client) jsonCall(ctx context.Context, timeout time.Duration, method, path string, in, out any) error {
	return c.jsonCallLimit(ctx, timeout, MaxReplyBytes, method, path, in, out)
}

// jsonCallLimit is jsonCall with its own reply size bound.
func (c *Client) jsonCallLimit(ctx context.Context, timeout time.Duration, limit int64, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode agent request: %w", err)
		}
		body = b
	}
	ctx, cancel := withGuestDeadline(ctx, timeout)
	defer cancel()
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := DecodeReply(resp.Body, limit, out); err != nil {
		if ctx.Err() != nil {
			return ctxErr(ctx, "agent "+method+" "+path)
		}
		return fmt.Errorf("agent %s %s: %w", method, path, err)
	}
	return nil
}

// do sends one request with an optional JSON body and returns a 2xx
// response; other statuses become categorized errors.
func (c *Client) do(ctx context.Context, method, path string, body []byte) (*http.Response, error) {
	if body == nil {
		return c.doStream(ctx, method, path, nil, "")
	}
	return c.doStream(ctx, method, path, bytes.NewReader(body), "application/json")
}

// doStream sends one request with a streamed body (nil for none).
func (c *Client) doStream(ctx context.Context, method, path string, body io.Reader, contentType string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("build agent request: %w", err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctxErr(ctx, "agent "+method+" "+path)
		}
		if errdefs.Category(err) != nil {
			return nil, err
		}
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, unavailableHint, "agent %s %s", method, path)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	var er ErrorResponse
	data, _ := io.ReadAll(io.LimitReader(resp.Body, MaxErrorBytes))
	if json.Unmarshal(data, &er) != nil || er.Error == "" {
		er = ErrorResponse{Error: fmt.Sprintf("http status %d: %s", resp.StatusCode, bytes.TrimSpace(data))}
	}
	return nil, er.Err(resp.StatusCode)
}

// guestDeadline is the cause of a context that a guest call's own
// deadline ended (as opposed to the caller's).
type guestDeadline struct{ after time.Duration }

func (g *guestDeadline) Error() string { return fmt.Sprintf("no answer within %s", g.after) }

// withGuestDeadline bounds one guest call to d.
func withGuestDeadline(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, d, &guestDeadline{after: d})
}

// ctxErr explains why ctx ended for op: the guest missed the call's own
// deadline (unavailable: it is hung or overloaded), or the caller gave up.
func ctxErr(ctx context.Context, op string) error {
	var gd *guestDeadline
	if cause := context.Cause(ctx); errors.As(cause, &gd) {
		return errdefs.Wrap(errdefs.ErrUnavailable, cause, hungHint, "%s: the guest stopped answering", op)
	}
	return fmt.Errorf("%s: %w", op, ctx.Err())
}

const hungHint = "the guest is hung or overloaded; check its state with `pyro vm status ID` or `pyro workspace status ID`, and look at its console log"
