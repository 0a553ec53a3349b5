package mcpserver

import (
	"bytes"
	"context"
	"io"
	"iter"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// HTTPOptions configure HTTPHandler. The zero value uses the defaults below.
type HTTPOptions struct {
	// SessionTimeout closes a session that has seen no request for this
	// long (its VMs are not touched: workspaces outlive sessions). Zero
	// means DefaultSessionTimeout; negative keeps idle sessions forever.
	SessionTimeout time.Duration
	// EventBytes bounds the SSE events kept per session for clients that
	// reconnect with Last-Event-ID. Zero means DefaultEventBytes.
	EventBytes int
	// Retry is the reconnection delay every SSE stream announces (its
	// "retry" field). Zero means DefaultRetry.
	Retry time.Duration
}

// Defaults of HTTPOptions.
const (
	DefaultSessionTimeout = 30 * time.Minute
	DefaultEventBytes     = 1 << 20
	DefaultRetry          = 2 * time.Second
	// maxEventSessions bounds how many sessions keep events at once; the
	// session idle longest loses its events first.
	maxEventSessions = 256
	// maxInflight bounds the requests tracked per session for cancellation.
	maxInflight = 1024
)

// HTTPHandler serves s over MCP's streamable HTTP transport. On top of the
// go-sdk's handler it
//   - gives every SSE event an id and keeps the last EventBytes of each
//     session's events, so a client whose stream broke during a long
//     vm_run or workspace_exec reconnects with Last-Event-ID and receives
//     the rest (the go-sdk replays from the store);
//   - starts every SSE stream with a "retry" field, so clients reconnect
//     after Retry instead of their own guess;
//   - sends no response to a request the client cancelled with
//     notifications/cancelled (the handler's context still ends, so the
//     work stops and a vm_run's VM is still removed), as on stdio;
//   - closes sessions idle for SessionTimeout.
//
// Authentication, Origin checks and deadlines are the caller's job.
func HTTPHandler(s *mcp.Server, o HTTPOptions) http.Handler {
	if o.SessionTimeout == 0 {
		o.SessionTimeout = DefaultSessionTimeout
	}
	if o.SessionTimeout < 0 {
		o.SessionTimeout = 0
	}
	if o.EventBytes <= 0 {
		o.EventBytes = DefaultEventBytes
	}
	if o.Retry <= 0 {
		o.Retry = DefaultRetry
	}
	st := &httpState{cancels: map[string]*cancels{}}
	st.events = newSessionEvents(o.EventBytes, st.isCancelledResponse)
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s },
		&mcp.StreamableHTTPOptions{EventStore: st.events, SessionTimeout: o.SessionTimeout})
	retry := []byte("retry: " + strconv.FormatInt(o.Retry.Milliseconds(), 10) + "\n\n")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		session := r.Header.Get("Mcp-Session-Id")
		if r.Method == http.MethodPost && r.Body != nil {
			body, err := io.ReadAll(io.LimitReader(r.Body, mcp.DefaultMaxRequestBodyBytes+1))
			r.Body.Close()
			if err != nil {
				http.Error(w, "bad request: cannot read the body", http.StatusBadRequest)
				return
			}
			// A bad frame is answered as on stdio (-32700 or -32600, id null
			// unless the frame had a usable one) with 400, not the go-sdk's
			// plain-text 400; the session is untouched either way.
			trimmed := bytes.TrimSpace(body)
			if len(body) <= mcp.DefaultMaxRequestBodyBytes {
				msgs, bad := checkFrame(trimmed, func() (bool, string) { return httpBatches(r.Header.Get("Mcp-Protocol-Version")) })
				if bad != nil {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusBadRequest)
					if bad.code != 0 {
						_, _ = w.Write(errorResponse(bad.id, bad.code, bad.message))
					}
					return
				}
				if session != "" {
					st.sawInbound(session, msgs)
				}
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		if session != "" && r.Method == http.MethodDelete {
			defer st.forget(session)
		}
		h.ServeHTTP(&sseWriter{ResponseWriter: w, st: st, session: session, retry: retry}, r)
	})
}

// httpState is what HTTPHandler keeps across requests.
type httpState struct {
	events *sessionEvents

	mu      sync.Mutex
	cancels map[string]*cancels // by session id
}

// httpBatches says whether a POST may carry a JSON-RPC batch: not in the
// protocol versions that removed batches (the header names the session's
// negotiated version).
func httpBatches(version string) (bool, string) {
	if version != "" && version >= noBatchVersion {
		return false, "invalid request: JSON-RPC batches are not supported in protocol version " + version + " (they were removed in " + noBatchVersion + ")"
	}
	return true, ""
}

// sawInbound records the requests and cancellations of a session's POST.
func (st *httpState) sawInbound(session string, msgs []jsonrpc.Message) {
	st.mu.Lock()
	defer st.mu.Unlock()
	c := st.cancels[session]
	if c == nil {
		c = &cancels{}
		st.cancels[session] = c
	}
	for _, m := range msgs {
		if req, ok := m.(*jsonrpc.Request); ok && req.ID.IsValid() && len(c.inflight) >= maxInflight {
			continue // a client flooding requests loses cancellation, not memory
		}
		c.sawInbound(m)
	}
	if len(c.inflight) == 0 {
		delete(st.cancels, session)
	}
}

// dropResponse reports whether the SSE event data answers a request of
// session that was cancelled; any response ends its request's tracking.
func (st *httpState) dropResponse(session string, data []byte) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	c := st.cancels[session]
	if c == nil {
		return false
	}
	drop := c.drop(data)
	if len(c.inflight) == 0 {
		delete(st.cancels, session)
	}
	return drop
}

// isCancelledResponse reports, without ending its tracking, whether data
// answers a cancelled request of session: such a response is not kept for
// replay either.
func (st *httpState) isCancelledResponse(session string, data []byte) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	c := st.cancels[session]
	if c == nil || len(c.cancelled) == 0 {
		return false
	}
	msg, err := jsonrpc.DecodeMessage(data)
	resp, ok := msg.(*jsonrpc.Response)
	return err == nil && ok && c.cancelled[resp.ID]
}

// forget drops a closed session's tracking.
func (st *httpState) forget(session string) {
	st.mu.Lock()
	delete(st.cancels, session)
	st.mu.Unlock()
}

// sseWriter adds the retry field at the start of an SSE response and drops
// the event carrying the response to a cancelled request. The go-sdk
// writes one whole event per Write.
type sseWriter struct {
	http.ResponseWriter
	st      *httpState
	session string
	retry   []byte
	started bool
}

func (w *sseWriter) Write(p []byte) (int, error) {
	sse := w.Header().Get("Content-Type") == "text/event-stream"
	if sse && !w.started {
		w.started = true
		if _, err := w.ResponseWriter.Write(w.retry); err != nil {
			return 0, err
		}
	}
	if sse && w.session != "" {
		if data := eventData(p); data != nil && w.st.dropResponse(w.session, data) {
			return len(p), nil
		}
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the connection (flushes).
func (w *sseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// eventData returns the data of one SSE event written as "...data: X\n\n"
// (nil when p is not such an event).
func eventData(p []byte) []byte {
	i := bytes.Index(p, []byte("data: "))
	if i < 0 || (i > 0 && p[i-1] != '\n') {
		return nil
	}
	d := bytes.TrimSuffix(p[i+len("data: "):], []byte("\n\n"))
	if bytes.IndexByte(d, '\n') >= 0 || len(d) == 0 {
		return nil
	}
	return d
}

// sessionEvents is an mcp.EventStore that bounds the events kept per
// session (EventBytes each, the oldest purged first) and the number of
// sessions keeping events. A client that resumes after its events were
// purged gets an error from the go-sdk instead of a gap.
type sessionEvents struct {
	perSession int
	// withheld reports data that must not be replayed (a cancelled
	// request's response); it is stored empty to keep the indexes aligned.
	withheld func(session string, data []byte) bool

	mu       sync.Mutex
	sessions map[string]*sessionStore
	clock    int64
}

type sessionStore struct {
	store *mcp.MemoryEventStore
	used  int64 // clock of the last use, for eviction
}

func newSessionEvents(perSession int, withheld func(string, []byte) bool) *sessionEvents {
	return &sessionEvents{perSession: perSession, withheld: withheld, sessions: map[string]*sessionStore{}}
}

// get returns session's store, creating it (and evicting the least
// recently used session past maxEventSessions) when create is set.
func (e *sessionEvents) get(session string, create bool) *mcp.MemoryEventStore {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.clock++
	s := e.sessions[session]
	if s == nil {
		if !create {
			return nil
		}
		if len(e.sessions) >= maxEventSessions {
			var oldest string
			for id, o := range e.sessions {
				if oldest == "" || o.used < e.sessions[oldest].used {
					oldest = id
				}
			}
			delete(e.sessions, oldest)
		}
		s = &sessionStore{store: mcp.NewMemoryEventStore(nil)}
		s.store.SetMaxBytes(e.perSession)
		e.sessions[session] = s
	}
	s.used = e.clock
	return s.store
}

func (e *sessionEvents) Open(ctx context.Context, session, stream string) error {
	return e.get(session, true).Open(ctx, session, stream)
}

func (e *sessionEvents) Append(ctx context.Context, session, stream string, data []byte) error {
	if e.withheld != nil && data != nil && e.withheld(session, data) {
		data = nil
	}
	return e.get(session, true).Append(ctx, session, stream, data)
}

func (e *sessionEvents) After(ctx context.Context, session, stream string, index int) iter.Seq2[[]byte, error] {
	s := e.get(session, false)
	if s == nil {
		return func(yield func([]byte, error) bool) {
			yield(nil, mcp.ErrEventsPurged)
		}
	}
	return s.After(ctx, session, stream, index)
}

func (e *sessionEvents) SessionClosed(_ context.Context, session string) error {
	e.mu.Lock()
	delete(e.sessions, session)
	e.mu.Unlock()
	return nil
}

var _ mcp.EventStore = (*sessionEvents)(nil)
