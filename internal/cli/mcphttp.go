package cli

import (
	"bytes"
	"io"
	"net/http"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Deadlines of the MCP HTTP server. A client that trickles its headers or
// its body (slowloris) must not hold a connection and a goroutine forever,
// but a response may stream for as long as a tool call runs (an SSE stream
// of a long vm_run), so there is no write deadline and no whole-request
// ReadTimeout: net/http keeps that read deadline armed while the handler
// runs, and its background read then cancels the request's context, which
// would cut long streams. The body gets its own deadline instead, cleared
// once it has been read.
var (
	headerTimeout = 10 * time.Second
	bodyTimeout   = 30 * time.Second
	idleTimeout   = 2 * time.Minute
)

// newHTTPServer serves handler with the header and idle deadlines above;
// the body deadline is readBody's, which goes inside the token check so
// that a client without the token never gets a body read (and buffered).
func newHTTPServer(handler http.Handler) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       idleTimeout,
	}
}

// readBody reads a request's whole body (at most one byte more than the
// MCP handler accepts, which answers 413 past that) within bodyTimeout,
// then lifts the deadline and hands the request on with the body in memory.
func readBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Now().Add(bodyTimeout))
		body, err := io.ReadAll(io.LimitReader(r.Body, mcp.DefaultMaxRequestBodyBytes+1))
		r.Body.Close()
		if err != nil {
			w.Header().Set("Connection", "close")
			http.Error(w, "bad request: the body did not arrive in time", http.StatusRequestTimeout)
			return
		}
		_ = rc.SetReadDeadline(time.Time{})
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
	})
}
