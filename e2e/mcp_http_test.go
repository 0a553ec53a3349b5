package e2e

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawHTTP is a raw JSON-RPC client of `pyro mcp serve --http`.
type rawHTTP struct {
	t                   *testing.T
	url, token, session string
}

func (c *rawHTTP) post(body string) *http.Response {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, c.url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Mcp-Protocol-Version", "2025-11-25")
	if c.session != "" {
		req.Header.Set("Mcp-Session-Id", c.session)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	return resp
}

func (c *rawHTTP) postAll(body string) (int, string) {
	c.t.Helper()
	resp := c.post(body)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

func (c *rawHTTP) initialize() {
	c.t.Helper()
	resp := c.post(`{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	c.session = resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || c.session == "" {
		c.t.Fatalf("initialize: status %d", resp.StatusCode)
	}
	c.postAll(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)
}

// TestMCPHTTPCancelNoResponse: over HTTP, a vm_run cancelled with
// notifications/cancelled once its command runs gets no response on its
// stream, its VM is removed (no directory, no QEMU), and the session still
// serves.
func TestMCPHTTPCancelNoResponse(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	url, token := httpServe(t, env)
	c := &rawHTTP{t: t, url: url, token: token}
	c.initialize()

	resp := c.post(`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"vm_run","arguments":{"environment":"` + baseEnv +
		`","command":"echo started; sleep 120","timeout_seconds":300},"_meta":{"progressToken":"p5"}}}`)
	defer resp.Body.Close()
	start := time.Now()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	cancelled := false
	var after []string
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		if cancelled {
			after = append(after, line)
		}
		if !cancelled && strings.Contains(line, "started") {
			if code, b := c.postAll(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5,"reason":"test"}}`); code != http.StatusAccepted {
				t.Fatalf("cancel: %d %s", code, b)
			}
			cancelled = true
		}
		if time.Since(start) > 3*time.Minute {
			t.Fatal("the stream runs on after the cancellation")
		}
	}
	if !cancelled {
		t.Fatal("the command never reported started")
	}
	for _, l := range after {
		if strings.Contains(l, `"id":5`) {
			t.Errorf("the cancelled vm_run was answered: %.300s", l)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(vmDirs(t, home)) > 0 || len(qemuProcessesFor(home)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after cancel: vm dirs %v, qemu pids %v", vmDirs(t, home), qemuProcessesFor(home))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code, body := c.postAll(`{"jsonrpc":"2.0","id":6,"method":"ping"}`); code != http.StatusOK || !strings.Contains(body, `"id":6,"result"`) {
		t.Errorf("ping after the cancellation: %d %.200s", code, body)
	}
}
