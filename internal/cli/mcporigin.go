package cli

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// originGuard refuses browser requests from other sites (the MCP spec's
// MUST for streamable HTTP): without it any web page the user visits could
// drive the server through DNS rebinding or a leaked token. Requests
// without an Origin (MCP clients that are not browsers) pass; an Origin
// passes when it names the address the server is bound to, or was given
// with --allow-origin.
type originGuard struct {
	loopback bool   // bound to a loopback address: any loopback name counts
	host     string // the bound host, lowercase, without brackets
	port     string // the bound port
	allowed  map[string]bool
}

// newOriginGuard builds the guard for a server listening on boundAddr
// (host:port as actually bound) with the --allow-origin entries allow.
func newOriginGuard(boundAddr string, allow []string) (*originGuard, error) {
	host, port, err := net.SplitHostPort(boundAddr)
	if err != nil {
		return nil, fmt.Errorf("bound address %q: %w", boundAddr, err)
	}
	g := &originGuard{loopback: isLoopback(host), host: strings.ToLower(host), port: port, allowed: map[string]bool{}}
	for _, a := range allow {
		o, ok := normalOrigin(a)
		if !ok {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, "give an origin as scheme://host[:port], e.g. https://app.example.com",
				"bad --allow-origin %q", a)
		}
		g.allowed[o] = true
	}
	return g, nil
}

// normalOrigin returns origin as "scheme://host:port" (lowercase, default
// port made explicit), or false when it is not an http(s) origin.
func normalOrigin(origin string) (string, bool) {
	u, err := url.Parse(strings.TrimSuffix(strings.TrimSpace(origin), "/"))
	if err != nil || u.Host == "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		return "", false
	}
	scheme := strings.ToLower(u.Scheme)
	port := u.Port()
	switch {
	case scheme != "http" && scheme != "https":
		return "", false
	case port == "" && scheme == "http":
		port = "80"
	case port == "":
		port = "443"
	}
	return scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port), true
}

// allows reports whether a request with these headers may be served.
func (g *originGuard) allows(origin, fetchSite string) bool {
	if origin == "" {
		// Browsers send Origin on every cross-origin request they let
		// through; this catches those that only send Sec-Fetch-Site.
		return !strings.EqualFold(fetchSite, "cross-site")
	}
	o, ok := normalOrigin(origin)
	if !ok { // "null" (sandboxed frames, file://), garbage
		return false
	}
	if g.allowed[o] {
		return true
	}
	u, _ := url.Parse(o)
	if u.Port() != g.port {
		return false
	}
	if g.loopback {
		return isLoopback(u.Hostname())
	}
	return u.Hostname() == g.host
}

// handler answers 403 to requests whose Origin is not allowed, before
// anything else sees them.
func (g *originGuard) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if !g.allows(origin, r.Header.Get("Sec-Fetch-Site")) {
			http.Error(w, fmt.Sprintf("forbidden: requests from origin %q are not allowed (hint: start the server with --allow-origin ORIGIN to allow a web client)", origin),
				http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}
