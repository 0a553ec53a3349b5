package cli

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestMCPBearer(t *testing.T) {
	srv := httptest.NewServer(requireBearer("s3cret", served))
	defer srv.Close()
	for _, c := range []struct {
		auth      string
		want      int
		challenge string
	}{
		{"Bearer s3cret", http.StatusTeapot, ""},
		{"bearer s3cret", http.StatusTeapot, ""},
		{"BEARER  s3cret ", http.StatusTeapot, ""},
		{"", http.StatusUnauthorized, `Bearer realm="pyro"`},
		{"Bearer wrong", http.StatusUnauthorized, `error="invalid_token"`},
		{"Bearer s3cre", http.StatusUnauthorized, `error="invalid_token"`},
		{"Basic s3cret", http.StatusUnauthorized, `Bearer realm="pyro"`},
		{"s3cret", http.StatusUnauthorized, `Bearer realm="pyro"`},
		{"Bearer", http.StatusUnauthorized, `Bearer realm="pyro"`},
	} {
		req, _ := http.NewRequest("POST", srv.URL, nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("Authorization %q: status %d, want %d", c.auth, resp.StatusCode, c.want)
			continue
		}
		if c.want != http.StatusUnauthorized {
			continue
		}
		if h := resp.Header.Get("WWW-Authenticate"); !strings.Contains(h, c.challenge) || !strings.HasPrefix(h, "Bearer ") {
			t.Errorf("Authorization %q: WWW-Authenticate %q, want it to contain %q", c.auth, h, c.challenge)
		}
		for _, want := range []string{"Authorization: Bearer <token>", tokenEnv} {
			if !strings.Contains(string(body), want) {
				t.Errorf("Authorization %q: 401 body %q does not mention %q", c.auth, body, want)
			}
		}
	}
}
