package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"time"
)

// maxInitializeBody bounds how much of a session-less POST is read to find
// its initialize request; an initialize is a few hundred bytes.
const maxInitializeBody = 1 << 20

// sessionlessProtocol is the first MCP protocol version whose requests
// carry no session (they announce it in the MCP-Protocol-Version header).
const sessionlessProtocol = "2026-07-28"

// requireSession answers 400 to a POST without an Mcp-Session-Id that is
// not an initialize request, as the streamable HTTP transport says a
// server with sessions should. The go-sdk would instead open a fresh,
// uninitialized session for it and answer from there.
func requireSession(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Header.Get("Mcp-Session-Id") != "" ||
			isSessionless(r.Header.Get("Mcp-Protocol-Version")) {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxInitializeBody+1))
		r.Body.Close()
		if err != nil {
			http.Error(w, "bad request: cannot read the body", http.StatusBadRequest)
			return
		}
		if len(body) > maxInitializeBody || !hasInitialize(body) {
			http.Error(w, "bad request: missing Mcp-Session-Id header (only an initialize request may come without one)", http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
	})
}

// hasInitialize reports whether body is an initialize request or a batch
// holding one.
func hasInitialize(body []byte) bool {
	type call struct {
		Method string `json:"method"`
	}
	var one call
	if json.Unmarshal(body, &one) == nil {
		return one.Method == "initialize"
	}
	var batch []call
	if json.Unmarshal(body, &batch) != nil {
		return false
	}
	for _, c := range batch {
		if c.Method == "initialize" {
			return true
		}
	}
	return false
}

// isSessionless reports whether version names a protocol version whose
// requests carry no session. Versions are dates (YYYY-MM-DD) and compare as
// strings only when they are well formed: compared blindly, any crafted
// header sorting after the date ("9", "2026-07-28x") would skip the
// session check.
func isSessionless(version string) bool {
	if len(version) != len("2006-01-02") {
		return false
	}
	if _, err := time.Parse("2006-01-02", version); err != nil {
		return false
	}
	return version >= sessionlessProtocol
}
