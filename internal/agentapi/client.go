package agentapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
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
type Client struct {
	dial DialFunc
	http *http.Client
	// base is prepended to every path: "http://pyro-agent" directly, or the
	// supervisor's proxy prefix when the agent is reached through it.
	base string

	mu      sync.Mutex
	conn    net.Conn
	session *yamux.Session
	closed  bool
}

// NewClient returns a Client that reaches the agent through dial.
func NewClient(dial DialFunc) *Client {
	c := &Client{dial: dial, base: "http://pyro-agent"}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			s, err := c.getSession(ctx)
			if err != nil {
				return nil, err
			}
			st, err := s.OpenStream()
			if err != nil {
				c.dropSession(s)
				return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, unavailableHint, "open agent stream")
			}
			return st, nil
		},
		DisableCompression:  true,
		MaxIdleConns:        16,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     5 * time.Minute,
	}
	c.http = &http.Client{Transport: tr}
	return c
}

func (c *Client) getSession(ctx context.Context) (*yamux.Session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errdefs.New(errdefs.ErrUnavailable, "", "agent client is closed")
	}
	if c.session != nil && !c.session.IsClosed() {
		return c.session, nil
	}
	if c.session != nil {
		_ = c.session.Close()
		_ = c.conn.Close()
		c.session, c.conn = nil, nil
	}
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, unavailableHint, "dial agent channel")
	}
	s, err := yamux.Client(conn, clientConfig())
	if err != nil {
		_ = conn.Close()
		return nil, errdefs.Wrap(errdefs.ErrUnavailable, err, "", "start agent session")
	}
	c.conn, c.session = conn, s
	return s, nil
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
func NewProxiedClient(dial DialFunc, prefix string) *Client {
	c := &Client{dial: dial, base: "http://pyro-supervisor" + prefix}
	c.http = &http.Client{Transport: &http.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		DisableCompression:  true,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}}
	return c
}

// Transport is the client's HTTP transport: a supervisor proxies requests
// to the agent through it.
func (c *Client) Transport() http.RoundTripper { return c.http.Transport }

// Health asks the agent how the guest is.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	resp, err := c.do(ctx, http.MethodGet, PathHealth, nil)
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return h, errdefs.Wrap(errdefs.ErrUnavailable, err, unavailableHint, "read agent health")
	}
	return h, nil
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
// Cancelling ctx aborts the request; the guest then kills the process group.
func (c *Client) Exec(ctx context.Context, req ExecRequest, onOutput func(stream string, p []byte)) (ExecResult, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return ExecResult{}, fmt.Errorf("encode exec request: %w", err)
	}
	resp, err := c.do(ctx, http.MethodPost, PathExec, body)
	if err != nil {
		return ExecResult{}, err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(bufio.NewReaderSize(resp.Body, 64<<10))
	for {
		var ev Event
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return ExecResult{}, fmt.Errorf("exec: %w", ctx.Err())
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return ExecResult{}, errdefs.Wrap(errdefs.ErrUnavailable, err, unavailableHint, "exec: output stream ended before the exit status")
		}
		switch ev.Type {
		case EventStdout, EventStderr:
			if onOutput != nil && len(ev.Data) > 0 {
				onOutput(ev.Type, ev.Data)
			}
		case EventExit:
			if ctx.Err() != nil {
				// The guest killed the command because we went away.
				return ExecResult{}, fmt.Errorf("exec: %w", ctx.Err())
			}
			if ev.Result == nil {
				return ExecResult{}, errdefs.New(errdefs.ErrUnavailable, "", "exec: exit event without a result")
			}
			return *ev.Result, nil
		case EventError:
			er := ErrorResponse{Error: "unknown error"}
			if ev.Error != nil {
				er = *ev.Error
			}
			return ExecResult{}, fmt.Errorf("exec: agent: %w", er.Err(0))
		}
	}
}

// Shutdown asks the guest to power off. It returns once the agent has
// acknowledged; the VMM exits shortly after. A channel that drops during
// the request is reported as ErrUnavailable: the caller decides by
// watching the VMM process.
func (c *Client) Shutdown(ctx context.Context) error {
	resp, err := c.do(ctx, http.MethodPost, PathShutdown, nil)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.Body.Close()
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
			return nil, fmt.Errorf("agent %s %s: %w", method, path, ctx.Err())
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
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(data, &er) != nil || er.Error == "" {
		er = ErrorResponse{Error: fmt.Sprintf("http status %d: %s", resp.StatusCode, bytes.TrimSpace(data))}
	}
	return nil, er.Err(resp.StatusCode)
}
