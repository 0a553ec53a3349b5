package mcpserver

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro"
)

// stdioPeer is a raw client of a server running on StdioTransport over pipes.
type stdioPeer struct {
	t   *testing.T
	in  io.WriteCloser
	out *bufio.Scanner
}

func startStdio(t *testing.T) *stdioPeer {
	t.Helper()
	return startStdioWith(t, table)
}

// startStdioWith serves tools instead of the table.
func startStdioWith(t *testing.T, tools []tool) *stdioPeer {
	t.Helper()
	c, err := pyro.New(pyro.Options{StateDir: t.TempDir(), Binary: "/nonexistent/pyro"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := newServer(c, Options{}, tools)
	if err != nil {
		t.Fatal(err)
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, &StdioTransport{In: inR, Out: outW}); outW.Close() }()
	t.Cleanup(func() {
		cancel()
		inW.Close()
		select {
		case <-done:
		case <-time.After(stdioWait):
			t.Error("server did not stop")
		}
	})
	sc := bufio.NewScanner(outR)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	return &stdioPeer{t: t, in: inW, out: sc}
}

type rpcReply struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Result  json.RawMessage `json:"result"`
	Error   *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// stdioWait bounds each step of a stdio test: generous, since it only
// tells a stuck server from a slow one (a 17 MiB line on a loaded host
// took over 5 s).
const stdioWait = 30 * time.Second

// write sends one line; it fails instead of blocking when the server
// does not read (say, because it is stuck writing an unexpected reply).
func (p *stdioPeer) write(line string) {
	p.t.Helper()
	done := make(chan error, 1)
	go func() { _, err := io.WriteString(p.in, line+"\n"); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			p.t.Fatalf("write %.100q: %v (server gone?)", line, err)
		}
	case <-time.After(stdioWait):
		p.t.Fatalf("the server does not read %.100q", line)
	}
}

// send writes one line and reads one reply line (within stdioWait).
func (p *stdioPeer) send(line string) (rpcReply, string) {
	p.t.Helper()
	p.write(line)
	got := make(chan string, 1)
	go func() {
		if p.out.Scan() {
			got <- p.out.Text()
		}
		close(got)
	}()
	select {
	case s, ok := <-got:
		if !ok {
			p.t.Fatalf("after %q: the server closed its output", line)
		}
		var r rpcReply
		if strings.HasPrefix(s, "[") {
			return r, s
		}
		if err := json.Unmarshal([]byte(s), &r); err != nil {
			p.t.Fatalf("after %.100q: reply %.300q is not JSON: %v", line, s, err)
		}
		return r, s
	case <-time.After(stdioWait):
		p.t.Fatalf("no reply to %q", line)
	}
	return rpcReply{}, ""
}

func (p *stdioPeer) initialize(version string) {
	p.t.Helper()
	r, raw := p.send(`{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"` + version + `","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
	if r.Error != nil || !strings.Contains(string(r.Result), version) {
		p.t.Fatalf("initialize: %s", raw)
	}
	p.write(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)
}

func (p *stdioPeer) toolsListWorks(id int) {
	p.t.Helper()
	idStr := itoa(id)
	r, raw := p.send(`{"jsonrpc":"2.0","id":` + idStr + `,"method":"tools/list"}`)
	if r.Error != nil || string(r.ID) != idStr || !strings.Contains(string(r.Result), `"vm_run"`) {
		p.t.Fatalf("tools/list after a bad frame: %.300s", raw)
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func TestStdioSurvivesBadFrames(t *testing.T) {
	for _, version := range []string{"2025-11-25", "2025-06-18"} {
		t.Run(version, func(t *testing.T) {
			p := startStdio(t)
			p.initialize(version)
			for i, c := range []struct {
				frame string
				code  int
				id    string
			}{
				{`{"jsonrpc":"2.0","id":1,"method":"tools/list"`, -32700, "null"},
				{`not json at all`, -32700, "null"},
				{`{"jsonrpc":"2.0","id":1}{"jsonrpc":"2.0"}`, -32700, "null"},
				{`{"jsonrpc":"1.0","id":7,"method":"tools/list"}`, -32600, "7"},
				{`{"id":"s","method":"tools/list"}`, -32600, `"s"`},
				{`{"jsonrpc":"2.0","id":8,"method":42}`, -32600, "8"},
				{`{"jsonrpc":"2.0","id":{"x":1},"method":"tools/list"}`, -32600, "null"},
				{`{"jsonrpc":"2.0"}`, -32600, "null"},
				{`{"jsonrpc":"2.0","id":null,"method":"ping"}`, -32600, "null"},
				{`{"jsonrpc":"2.0","id":1.5,"method":"ping"}`, -32600, "1.5"},
				{`{"jsonrpc":"2.0","id":true,"method":"ping"}`, -32600, "null"},
				{`42`, -32600, "null"},
				{`null`, -32600, "null"},
				{`[]`, -32600, "null"},
				{`[{"jsonrpc":"2.0","id":9,"method":"tools/list"}]`, -32600, "null"},
				{strings.Repeat("[", 1001) + strings.Repeat("]", 1001), -32700, "null"},
			} {
				r, raw := p.send(c.frame)
				if r.JSONRPC != "2.0" || r.Error == nil || r.Error.Code != c.code || string(r.ID) != c.id {
					t.Errorf("frame %q: want error %d with id %s, got %s", c.frame, c.code, c.id, raw)
				}
				p.toolsListWorks(100 + i)
			}
		})
	}
}

// An error response without an id gets no answer (answering answers could
// loop between two peers), and the server goes on.
func TestStdioIgnoresIDlessErrorResponse(t *testing.T) {
	p := startStdio(t)
	p.initialize("2025-11-25")
	p.write(`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}`)
	p.toolsListWorks(1) // the next line out answers tools/list, not the response
}

// Batches stay usable under a protocol version that has them.
func TestStdioBatchBeforeRemoval(t *testing.T) {
	p := startStdio(t)
	p.initialize("2025-03-26")
	_, raw := p.send(`[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"ping"}]`)
	if !strings.HasPrefix(raw, "[") || !strings.Contains(raw, `"vm_run"`) {
		t.Fatalf("batch reply: %.200s", raw)
	}
	for _, bad := range []string{`[]`, `[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":1,"method":"ping"}]`, `[{"jsonrpc":"1.0","id":3,"method":"ping"}]`} {
		r, raw := p.send(bad)
		if r.Error == nil || r.Error.Code != -32600 || string(r.ID) != "null" {
			t.Errorf("%s: want -32600 id null, got %s", bad, raw)
		}
		p.toolsListWorks(50)
	}
}

// An over-long line is answered and skipped, not fatal.
func TestStdioLongLine(t *testing.T) {
	p := startStdio(t)
	p.initialize("2025-11-25")
	r, raw := p.send(`{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"` + strings.Repeat("a", 17<<20) + `"}}`)
	if r.Error == nil || r.Error.Code != -32600 {
		t.Fatalf("want -32600 for an oversized frame, got %.200s", raw)
	}
	p.toolsListWorks(2)
}

// A call before initialize gets a standard JSON-RPC code, not the go-sdk's 0.
func TestStdioBeforeInitializeStandardCode(t *testing.T) {
	p := startStdio(t)
	r, raw := p.send(`{"jsonrpc":"2.0","id":3,"method":"tools/list"}`)
	if r.Error == nil || r.Error.Code != -32600 || string(r.ID) != "3" {
		t.Fatalf("tools/list before initialize: want -32600 with id 3, got %s", raw)
	}
	if r, raw := p.send(`{"jsonrpc":"2.0","id":4,"method":"ping"}`); r.Error != nil {
		t.Fatalf("ping before initialize: %s", raw)
	}
	p.initialize("2025-11-25")
	p.toolsListWorks(5)
}

func TestSetLevelUnknownIsInvalidParams(t *testing.T) {
	p := startStdio(t)
	p.initialize("2025-11-25")
	r, raw := p.send(`{"jsonrpc":"2.0","id":1,"method":"logging/setLevel","params":{"level":"verbose"}}`)
	if r.Error == nil || r.Error.Code != -32602 || string(r.ID) != "1" {
		t.Fatalf("setLevel verbose: want -32602, got %s", raw)
	}
	if r, raw := p.send(`{"jsonrpc":"2.0","id":2,"method":"logging/setLevel","params":{"level":"warning"}}`); r.Error != nil {
		t.Fatalf("setLevel warning: %s", raw)
	}
}
