package cli

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// served is what the MCP handler answers when a request gets through.
var served = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })

func TestMCPHTTPOrigin(t *testing.T) {
	const token = "tok"
	for _, c := range []struct {
		bound   string
		allow   []string
		headers map[string]string
		want    int
	}{
		// No Origin: a non-browser client.
		{"127.0.0.1:8765", nil, nil, http.StatusTeapot},
		{"127.0.0.1:8765", nil, map[string]string{"Origin": "http://127.0.0.1:8765"}, http.StatusTeapot},
		{"127.0.0.1:8765", nil, map[string]string{"Origin": "http://localhost:8765"}, http.StatusTeapot},
		{"127.0.0.1:8765", nil, map[string]string{"Origin": "http://[::1]:8765"}, http.StatusTeapot},
		{"127.0.0.1:8765", nil, map[string]string{"Origin": "HTTP://LOCALHOST:8765/"}, http.StatusTeapot},
		{"[::1]:8765", nil, map[string]string{"Origin": "http://localhost:8765"}, http.StatusTeapot},
		{"127.0.0.1:443", nil, map[string]string{"Origin": "https://localhost"}, http.StatusTeapot},
		{"127.0.0.1:8765", nil, map[string]string{"Sec-Fetch-Site": "same-origin"}, http.StatusTeapot},
		// Foreign origins, including another local port.
		{"127.0.0.1:8765", nil, map[string]string{"Origin": "https://evil.example"}, http.StatusForbidden},
		{"127.0.0.1:8765", nil, map[string]string{"Origin": "http://localhost:3000"}, http.StatusForbidden},
		{"127.0.0.1:8765", nil, map[string]string{"Origin": "http://127.0.0.1"}, http.StatusForbidden},
		{"127.0.0.1:8765", nil, map[string]string{"Origin": "null"}, http.StatusForbidden},
		{"127.0.0.1:8765", nil, map[string]string{"Origin": "file://"}, http.StatusForbidden},
		{"127.0.0.1:8765", nil, map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"127.0.0.1:8765", nil, map[string]string{"Origin": "http://evil.example", "Sec-Fetch-Site": "same-origin"}, http.StatusForbidden},
		// A rebinding name that resolves to loopback is still a foreign origin.
		{"127.0.0.1:8765", nil, map[string]string{"Origin": "http://rebind.evil.example:8765"}, http.StatusForbidden},
		// A remote bind accepts its own host only.
		{"192.0.2.7:8765", nil, map[string]string{"Origin": "https://192.0.2.7:8765"}, http.StatusTeapot},
		{"192.0.2.7:8765", nil, map[string]string{"Origin": "https://localhost:8765"}, http.StatusForbidden},
		// --allow-origin entries.
		{"127.0.0.1:8765", []string{"https://app.example.com"}, map[string]string{"Origin": "https://app.example.com"}, http.StatusTeapot},
		{"127.0.0.1:8765", []string{"https://app.example.com/"}, map[string]string{"Origin": "https://app.example.com:443", "Sec-Fetch-Site": "cross-site"}, http.StatusTeapot},
		{"127.0.0.1:8765", []string{"https://app.example.com"}, map[string]string{"Origin": "http://app.example.com"}, http.StatusForbidden},
		{"127.0.0.1:8765", []string{"https://app.example.com"}, map[string]string{"Origin": "https://app.example.com:8443"}, http.StatusForbidden},
	} {
		g, err := newOriginGuard(c.bound, c.allow)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(g.handler(requireBearer(token, served)))
		req, _ := http.NewRequest("POST", srv.URL+"/mcp", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		for k, v := range c.headers {
			req.Header.Set(k, v)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		srv.Close()
		if resp.StatusCode != c.want {
			t.Errorf("bound %s, allow %v, headers %v: status %d, want %d", c.bound, c.allow, c.headers, resp.StatusCode, c.want)
		}
	}
}

func TestMCPAllowOriginRejectsBadEntries(t *testing.T) {
	for _, bad := range []string{"app.example.com", "*", "ftp://app.example.com", "https://app.example.com/path", "null"} {
		if _, err := newOriginGuard("127.0.0.1:8765", []string{bad}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("--allow-origin %q: want invalid_argument, got %v", bad, err)
		}
	}
}
