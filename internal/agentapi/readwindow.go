package agentapi

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/names"
)

// checkID refuses an id the agent never hands out ("..", "a/b"): shell and
// job ids come from the model and become part of a request path.
func checkID(kind, id, hint string) error {
	if !names.IsIdentifier(id) {
		return errdefs.New(errdefs.ErrInvalidArgument, hint, "invalid %s id %q", kind, id)
	}
	return nil
}

// handedOut checks an id the agent hands out (a new shell's, a new job's):
// the guest chooses it, and the host prints it and sends it back in
// request paths, so an id the agent never makes is a broken answer.
func handedOut(kind, id string, err error) error {
	if err == nil && !names.IsIdentifier(id) {
		return errdefs.New(errdefs.ErrUnavailable, "", "the agent answered with an invalid %s id %q", kind, id)
	}
	return err
}

// itemPath is the path of one shell or job (base is PathShells or
// PathJobs) with suffix ("/read", "/write"...) appended.
func itemPath(base, id, suffix string) string {
	return base + "/" + url.PathEscape(id) + suffix
}

// outputRead is one cursor read of buffered output, a shell's or a job's.
type outputRead struct {
	cursor      int64
	maxChars    int // the model's number; 0 is the agent's default
	waitMS      int // long-poll, shells only
	bufferBytes int // the most output the agent can hold for this kind
}

// readLimit bounds a read's reply: maxChars runes, each at most 6 bytes
// once JSON-escaped, plus the fields around them. maxChars is the model's
// number: past what the agent's buffer can hold it does not widen the bound.
func (r outputRead) readLimit() int64 {
	chars := r.maxChars
	if chars <= 0 {
		chars = DefaultShellMaxChars
	}
	chars = min(chars, r.bufferBytes)
	return max(MaxReplyBytes, 6*int64(chars)+64<<10)
}

// readTimeout bounds a read: its long-poll (capped by the agent at
// MaxShellReadWaitMS) plus callTimeout.
func (r outputRead) readTimeout() time.Duration {
	wait := min(max(r.waitMS, 0), MaxShellReadWaitMS)
	return time.Duration(wait)*time.Millisecond + callTimeout
}

// readOutput is the one client of GET <base>/<id>/read: shells and jobs
// share its query, its size bound and its time bound.
func (c *Client) readOutput(ctx context.Context, base, id string, r outputRead, out any) error {
	q := url.Values{}
	q.Set("cursor", strconv.FormatInt(r.cursor, 10))
	if r.maxChars != 0 {
		q.Set("max_chars", strconv.Itoa(r.maxChars))
	}
	if r.waitMS != 0 {
		q.Set("wait_ms", strconv.Itoa(r.waitMS))
	}
	return c.jsonCallLimit(ctx, r.readTimeout(), r.readLimit(), http.MethodGet, itemPath(base, id, "/read?"+q.Encode()), nil, out)
}
