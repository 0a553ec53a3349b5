package mcpserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/pyro-mcp/pyro"
)

// httpPeer is a raw client of HTTPHandler.
type httpPeer struct {
	t       *testing.T
	srv     *httptest.Server
	session string
}

func startHTTP(t *testing.T, tools []tool, o HTTPOptions) *httpPeer {
	t.Helper()
	c, err := pyro.New(pyro.Options{StateDir: t.TempDir(), Binary: "/nonexistent/pyro"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := newServer(c, Options{}, tools)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(HTTPHandler(s, o))
	t.Cleanup(srv.Close)
	return &httpPeer{t: t, srv: srv}
}

// request sends one HTTP request of the session and returns the response
// with its body unread.
func (p *httpPeer) request(ctx context.Context, method, body string, hdr ...string) *http.Response {
	p.t.Helper()
	req, _ := http.NewRequestWithContext(ctx, method, p.srv.URL, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Mcp-Protocol-Version", "2025-11-25")
	if p.session != "" {
		req.Header.Set("Mcp-Session-Id", p.session)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := p.srv.Client().Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	return resp
}

// post sends body and returns the status and the whole response body.
func (p *httpPeer) post(body string) (int, string) {
	p.t.Helper()
	resp := p.request(context.Background(), http.MethodPost, body)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

func (p *httpPeer) initialize() {
	p.t.Helper()
	resp := p.request(context.Background(), http.MethodPost,
		`{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	p.session = resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || p.session == "" {
		p.t.Fatalf("initialize: %d %.300s", resp.StatusCode, b)
	}
	if code, b := p.post(`{"jsonrpc":"2.0","method":"notifications/initialized"}`); code != http.StatusAccepted {
		p.t.Fatalf("initialized: %d %s", code, b)
	}
}

// TestHTTPBadFramesAnswered: over HTTP, each bad frame is answered with a
// 400 carrying the JSON-RPC error (as on stdio), and the session keeps
// serving.
func TestHTTPBadFramesAnswered(t *testing.T) {
	p := startHTTP(t, table, HTTPOptions{})
	p.initialize()
	for _, c := range []struct{ frame, want string }{
		{`not json`, `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,`},
		{`{"jsonrpc":"1.0","id":2,"method":"ping"}`, `{"jsonrpc":"2.0","id":2,"error":{"code":-32600,`},
		{`{"jsonrpc":"2.0","id":3,"method":5}`, `{"jsonrpc":"2.0","id":3,"error":{"code":-32600,`},
		{`{"jsonrpc":"2.0","id":null,"method":"ping"}`, `{"jsonrpc":"2.0","id":null,"error":{"code":-32600,`},
		{`[]`, `{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"invalid request: empty batch"`},
		{`[{"jsonrpc":"2.0","id":4,"method":"ping"},{"jsonrpc":"2.0","id":5,"method":"ping"}]`, `{"jsonrpc":"2.0","id":null,"error":{"code":-32600,`},
		{strings.Repeat("[", 1001) + strings.Repeat("]", 1001), `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,`},
	} {
		code, body := p.post(c.frame)
		if code != http.StatusBadRequest || !strings.HasPrefix(body, c.want) {
			t.Errorf("%.60s: %d %.200q, want 400 starting %s", c.frame, code, body, c.want)
		}
		if code, body := p.post(`{"jsonrpc":"2.0","id":9,"method":"tools/list"}`); code != http.StatusOK || !strings.Contains(body, `"vm_run"`) {
			t.Fatalf("after %.60s the session no longer serves: %d %.200s", c.frame, code, body)
		}
	}
}

// TestHTTPSetLevelUnknown: logging/setLevel with an unknown level is
// -32602 over HTTP too.
func TestHTTPSetLevelUnknown(t *testing.T) {
	p := startHTTP(t, table, HTTPOptions{})
	p.initialize()
	_, body := p.post(`{"jsonrpc":"2.0","id":6,"method":"logging/setLevel","params":{"level":"loud"}}`)
	if !strings.Contains(body, `"id":6,"error":{"code":-32602`) {
		t.Errorf("setLevel loud: %.300s", body)
	}
	_, body = p.post(`{"jsonrpc":"2.0","id":7,"method":"logging/setLevel","params":{"level":"debug"}}`)
	if !strings.Contains(body, `"id":7,"result":{}`) {
		t.Errorf("setLevel debug: %.300s", body)
	}
}

// sseEvent is one parsed server-sent event.
type sseEvent struct{ id, name, data, retry string }

// readEvents parses SSE events from r until it ends or n events were read
// (n < 0: all).
func readEvents(r io.Reader, n int) []sseEvent {
	var out []sseEvent
	var e sseEvent
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if e != (sseEvent{}) {
				out = append(out, e)
				if n >= 0 && len(out) == n {
					return out
				}
			}
			e = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			e.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			e.name = line[7:]
		case strings.HasPrefix(line, "data: "):
			e.data = line[6:]
		case strings.HasPrefix(line, "retry: "):
			e.retry = line[7:]
		}
	}
	return out
}

// TestHTTPCancelledRequestGetsNoResponse: after notifications/cancelled
// the handler's context ends (the work stops), and the request's SSE
// stream ends without a response; later requests are answered.
func TestHTTPCancelledRequestGetsNoResponse(t *testing.T) {
	started, stopped := make(chan struct{}), make(chan struct{})
	block := def(tool{name: "block", title: "Block", description: "Blocks until cancelled; a test tool for request cancellation."},
		func(ctx context.Context, cl *call, _ noIn) (blockOut, string, error) {
			close(started)
			<-ctx.Done()
			close(stopped)
			return blockOut{}, "", errors.New("cancelled")
		})
	p := startHTTP(t, append(slices.Clone(table), block), HTTPOptions{})
	p.initialize()
	events := make(chan []sseEvent, 1)
	go func() {
		resp := p.request(context.Background(), http.MethodPost, `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"block","arguments":{}}}`)
		defer resp.Body.Close()
		events <- readEvents(resp.Body, -1)
	}()
	wait := func(ch chan struct{}, what string) {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("the handler never %s", what)
		}
	}
	wait(started, "started")
	if code, b := p.post(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7,"reason":"user"}}`); code != http.StatusAccepted {
		t.Fatalf("cancel: %d %s", code, b)
	}
	wait(stopped, "stopped")
	select {
	case evs := <-events:
		for _, e := range evs {
			if strings.Contains(e.data, `"id":7`) {
				t.Errorf("the cancelled request was answered: %s", e.data)
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the cancelled request's stream did not end")
	}
	if code, body := p.post(`{"jsonrpc":"2.0","id":7,"method":"ping"}`); code != http.StatusOK || !strings.Contains(body, `"id":7,"result"`) {
		t.Errorf("a new request with the same id: %d %.200s", code, body)
	}
}

type tickIn struct {
	N int `json:"rows"` // a bounded name; the table requires bounds
}

// TestHTTPResumeLongCall: every SSE event has an id and streams start with
// a retry hint; a client whose stream of a long call broke reconnects with
// Last-Event-ID and receives the rest: the remaining progress and the
// result.
func TestHTTPResumeLongCall(t *testing.T) {
	release := make(chan struct{})
	tick := def(tool{name: "tick", title: "Tick", description: "Sends n progress notifications, the last ones after release; a test tool for stream resumption."},
		func(ctx context.Context, cl *call, in tickIn) (blockOut, string, error) {
			for i := 1; i <= in.N; i++ {
				if i == 3 {
					select {
					case <-release:
					case <-ctx.Done():
						return blockOut{}, "", ctx.Err()
					}
				}
				cl.p.step(ctx, "tick %d", i)
			}
			return blockOut{Done: true}, "ticked", nil
		})
	p := startHTTP(t, append(slices.Clone(table), tick), HTTPOptions{Retry: 1500 * time.Millisecond})
	p.initialize()
	ctx, cancel := context.WithCancel(context.Background())
	resp := p.request(ctx, http.MethodPost, `{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"tick","arguments":{"rows":5},"_meta":{"progressToken":"pt"}}}`)
	first := readEvents(resp.Body, 3) // the retry hint, the priming event, tick 1
	cancel()
	resp.Body.Close()
	if len(first) != 3 || first[0].retry != "1500" {
		t.Fatalf("stream start: %+v, want a retry hint of 1500 ms first", first)
	}
	for _, e := range first[1:] {
		if e.id == "" {
			t.Errorf("event without an id: %+v", e)
		}
	}
	if !strings.Contains(first[len(first)-1].data, "tick 1") {
		t.Fatalf("before the break: %+v", first)
	}
	last := first[len(first)-1].id
	close(release)
	time.Sleep(100 * time.Millisecond)
	resp = p.request(context.Background(), http.MethodGet, "", "Last-Event-ID", last, "Accept", "text/event-stream")
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("resume: %d %s", resp.StatusCode, b)
	}
	rest := readEvents(resp.Body, -1)
	var got []string
	for _, e := range rest {
		if e.data != "" {
			got = append(got, e.data)
		}
	}
	all := strings.Join(got, "\n")
	for i, want := range []string{"tick 2", "tick 3", "tick 4", "tick 5", `"id":11,"result"`} {
		if !strings.Contains(all, want) {
			t.Errorf("resumed stream lacks %d %q:\n%s", i, want, all)
		}
	}
	if strings.Contains(all, "tick 1\"") {
		t.Errorf("resumed stream repeats what the client had:\n%s", all)
	}
}

// TestHTTPSessionExpires: a session idle longer than SessionTimeout is
// closed; its id is then unknown (404), and a new session works.
func TestHTTPSessionExpires(t *testing.T) {
	p := startHTTP(t, table, HTTPOptions{SessionTimeout: 200 * time.Millisecond})
	p.initialize()
	if code, _ := p.post(`{"jsonrpc":"2.0","id":1,"method":"ping"}`); code != http.StatusOK {
		t.Fatalf("ping: %d", code)
	}
	time.Sleep(600 * time.Millisecond)
	if code, body := p.post(`{"jsonrpc":"2.0","id":2,"method":"ping"}`); code != http.StatusNotFound {
		t.Errorf("ping after the idle timeout: %d %.200s, want 404", code, body)
	}
	p.session = ""
	p.initialize()
}

// TestSessionEventsBounded: each session keeps at most its byte budget of
// events (a resume past the purge is an error, not a gap), and at most
// maxEventSessions sessions keep events.
func TestSessionEventsBounded(t *testing.T) {
	ctx := context.Background()
	e := newSessionEvents(1000, nil)
	_ = e.Open(ctx, "a", "s")
	_ = e.Open(ctx, "b", "s")
	for i := 0; i < 100; i++ {
		_ = e.Append(ctx, "a", "s", []byte(strings.Repeat("x", 100)))
	}
	_ = e.Append(ctx, "b", "s", []byte("kept"))
	for _, err := range e.After(ctx, "a", "s", 0) {
		if !errors.Is(err, mcp.ErrEventsPurged) {
			t.Errorf("resume from a purged index: %v, want ErrEventsPurged", err)
		}
		break
	}
	n := 0
	for d, err := range e.After(ctx, "a", "s", 90) {
		if err != nil {
			t.Fatal(err)
		}
		n += len(d)
	}
	if n > 1000 {
		t.Errorf("session a kept %d bytes, budget 1000", n)
	}
	for d, err := range e.After(ctx, "b", "s", -1) {
		if err != nil || string(d) != "kept" {
			t.Errorf("session b lost its events to a's: %q %v", d, err)
		}
	}
	for i := 0; i < maxEventSessions+10; i++ {
		_ = e.Open(ctx, fmt.Sprint("s", i), "s")
	}
	if len(e.sessions) > maxEventSessions {
		t.Errorf("%d sessions keep events, bound %d", len(e.sessions), maxEventSessions)
	}
}
