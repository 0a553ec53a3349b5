package supervisor

// The layer housekeeping after a checkpoint, off the command's path:
//
//	POST /v1/layers/tidy <- TidyRequest -> 202, empty
//
// After a checkpointed command the caller asks the supervisor, which lives
// as long as the workspace, to tidy its layers in the background: drop
// checkpoints past the caps, merge or delete the layers no state needs,
// fold the pending listing, make the next overlay ahead (package pyro,
// workspace_checkpoints_tidy.go, sets Tidy). The caller's command is then
// over before any of it runs, so none of it competes with the command for
// the two cores and the VMM's main loop, and a CLI process exits without
// waiting for it; it starts once the caller has read the 202 and let go
// of the connection (answerFirst), so not even the answer races it. Every
// step takes the workspace's layer lock, as it did in the caller, so the
// next layer change waits for a tidy under way; a tidy that dies with the
// supervisor is a process killed at some point, which each step already
// survives.
//
// After an exec the caller asks with Quiet: the tidy first asks the guest
// for its quiet report (agentapi.Client.Quiet) through the supervisor's
// own agent connection, and keeps it for the next checkpoint; the exec's
// caller has already answered, so neither the guest's listing nor the
// host's records of it are on any command's path.
//
// One tidy runs at a time; a request while one runs asks for one more pass
// after it (with Quiet if any request since asked for it). A supervisor without Tidy (another test binary, an older pyro)
// answers 404: the caller then tidies itself.

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

// PathTidy is the route of the layer housekeeping.
const PathTidy = "/v1/layers/tidy"

// TidyRequest carries the caller's checkpoint caps (its environment, not
// the supervisor's, decides them).
type TidyRequest struct {
	MaxCount int   `json:"max_count"`
	MaxBytes int64 `json:"max_bytes"`
	// Quiet asks for the guest's quiet report first (after an exec).
	Quiet bool `json:"quiet,omitempty"`
}

// Tidy is the housekeeping itself, set by the package that owns the
// layers; nil leaves the route unserved. agent is the guest's agent (nil
// when the guest is not running).
var Tidy func(ctx context.Context, dir vmdir.Dir, rec instance.Record, req TidyRequest, agent *agentapi.Client, log *slog.Logger)

// tidyTimeout bounds one tidy (a merge of layers past the caps is the
// long part: block-commit of what the merged layers hold).
const tidyTimeout = 10 * time.Minute

// tidier runs one tidy at a time in the background.
type tidier struct {
	mu      sync.Mutex
	running bool
	next    *TidyRequest // a pass asked for while one ran
	done    sync.WaitGroup
}

func (s *server) tidyRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST "+PathTidy, func(w http.ResponseWriter, r *http.Request) {
		tidy := Tidy
		if tidy == nil {
			writeError(w, errdefs.New(errdefs.ErrNotFound, "tidy the layers in the caller", "this supervisor does not tidy layers"))
			return
		}
		var req TidyRequest
		body := io.LimitReader(r.Body, 4096)
		if err := json.NewDecoder(body).Decode(&req); err != nil {
			writeError(w, errdefs.New(errdefs.ErrInvalidArgument, "", "bad tidy request: %v", err))
			return
		}
		_, _ = io.Copy(io.Discard, body) // to its end: see answerFirst
		s.tidy.mu.Lock()
		if s.tidy.running {
			if s.tidy.next != nil && s.tidy.next.Quiet {
				req.Quiet = true
			}
			s.tidy.next = &req
			s.tidy.mu.Unlock()
			w.WriteHeader(http.StatusAccepted)
			return
		}
		s.tidy.running = true
		s.tidy.done.Add(1)
		s.tidy.mu.Unlock()
		answerFirst(w, r)
		go s.runTidy(tidy, req)
	})
}

// callerGoneWait bounds how long a tidy waits for its caller to let go of
// the connection its answer went over (a caller that keeps it only delays
// its own tidy by this much).
var callerGoneWait = time.Second

// answerFirst answers a tidy request (202, with Connection: close) and
// returns once the caller has read the answer and closed the connection
// (the server notices the close once the request body was read to its end,
// and ends the request's context), or after callerGoneWait: the
// housekeeping, 5-30 ms of the supervisor's and the guest's CPU, then
// starts after the answer, not beside it on the caller's path (the exec's
// caller waits for this answer before it returns; the tidy started first
// and its quiet report raced the answer for the two cores).
func answerFirst(w http.ResponseWriter, r *http.Request) {
	// An empty body of known length: a caller that reads the answer to
	// its end (Client.call) must not wait for the close this waits for.
	w.Header().Set("Content-Length", "0")
	w.Header().Set("Connection", "close")
	w.WriteHeader(http.StatusAccepted)
	if err := http.NewResponseController(w).Flush(); err != nil {
		return
	}
	t := time.NewTimer(callerGoneWait)
	defer t.Stop()
	select {
	case <-r.Context().Done():
	case <-t.C:
	}
}

// runTidy runs tidy passes until none is asked for; a stop of the
// supervisor cancels the one under way.
func (s *server) runTidy(tidy func(context.Context, vmdir.Dir, instance.Record, TidyRequest, *agentapi.Client, *slog.Logger), req TidyRequest) {
	defer s.tidy.done.Done()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), tidyTimeout)
		go func() {
			select {
			case <-s.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		tidy(ctx, s.dir, s.rec, req, s.runningAgent(), s.log)
		cancel()
		s.tidy.mu.Lock()
		if s.tidy.next == nil {
			s.tidy.running = false
			s.tidy.mu.Unlock()
			return
		}
		req, s.tidy.next = *s.tidy.next, nil
		s.tidy.mu.Unlock()
	}
}

// runningAgent is the guest's agent when it runs (not paused), else nil.
func (s *server) runningAgent() *agentapi.Client {
	s.mu.Lock()
	v, state := s.vm, s.status.State
	s.mu.Unlock()
	if v == nil || state != instance.Running || s.paused() {
		return nil
	}
	return v.Agent
}

// waitTidy waits (up to d) for a tidy under way to end, before the
// supervisor's process goes.
func (s *server) waitTidy(d time.Duration) {
	ended := make(chan struct{})
	go func() { s.tidy.done.Wait(); close(ended) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ended:
	case <-t.C:
	}
}

// Tidy asks the supervisor to tidy the workspace's layers in the
// background; an error (errdefs.ErrNotFound: it cannot) leaves it to the
// caller.
func (c *Client) Tidy(ctx context.Context, req TidyRequest) error {
	return c.call(ctx, http.MethodPost, PathTidy, req, nil)
}
