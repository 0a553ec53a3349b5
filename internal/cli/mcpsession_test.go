package cli

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/mcpserver"
)

// mcpHTTP serves the real MCP handler behind requireSession.
func mcpHTTP(t *testing.T) *httptest.Server {
	t.Helper()
	c, err := pyro.New(pyro.Options{StateDir: t.TempDir(), Binary: "/nonexistent/pyro"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := mcpserver.New(c, mcpserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(requireSession(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil)))
	t.Cleanup(srv.Close)
	return srv
}

func post(t *testing.T, srv *httptest.Server, session, body string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", srv.URL, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if session != "" {
		req.Header.Set("Mcp-Session-Id", session)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func TestMCPHTTPNeedsSessionExceptInitialize(t *testing.T) {
	srv := mcpHTTP(t)
	for _, body := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`,
		`{"jsonrpc":"2.0","method":"notifications/initialized"}`,
		`not json`,
	} {
		if resp, b := post(t, srv, "", body); resp.StatusCode != http.StatusBadRequest || !strings.Contains(b, "Mcp-Session-Id") {
			t.Errorf("%s without a session: status %d %q, want 400", body, resp.StatusCode, b)
		}
	}
	resp, b := post(t, srv, "", `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
	session := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || session == "" {
		t.Fatalf("initialize: status %d, session %q, body %.200s", resp.StatusCode, session, b)
	}
	post(t, srv, session, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	if resp, b := post(t, srv, session, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`); resp.StatusCode != http.StatusOK || !strings.Contains(b, "vm_run") {
		t.Errorf("tools/list with the session: status %d, body %.200s", resp.StatusCode, b)
	}
}

// TestMCPHTTPCraftedVersionNeedsSession: a protocol version header that
// only sorts after the sessionless date as a string does not skip the
// session check; a well-formed later date goes on to the SDK's own answer.
func TestMCPHTTPCraftedVersionNeedsSession(t *testing.T) {
	srv := mcpHTTP(t)
	for _, v := range []string{"9", "9999", "2026-07-28x", "2026-99-99", "３０００-01-01"} {
		req, _ := http.NewRequest("POST", srv.URL, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Mcp-Protocol-Version", v)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "Mcp-Session-Id") {
			t.Errorf("version %q without a session: status %d %.200q, want our 400 naming Mcp-Session-Id", v, resp.StatusCode, b)
		}
	}
	if !isSessionless("2026-07-28") || !isSessionless("2027-01-01") || isSessionless("2025-11-25") {
		t.Error("well-formed dates must compare by date")
	}
}
