package agentapi

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Size bounds the host applies to what the guest sends. A guest may replace
// its agent, so nothing it says is trusted: a reply past a bound is an
// error (unavailable), never a bigger allocation.
const (
	// MaxEventDataBytes is the most output one exec event carries; the
	// agent splits larger chunks.
	MaxEventDataBytes = 64 << 10
	// MaxEventLineBytes bounds one line of the exec stream: a full data
	// event in base64 plus room for the JSON around it. The exit event has
	// no output in it, so it is far smaller.
	MaxEventLineBytes = 256 << 10
	// MaxReplyBytes bounds a JSON reply body (health, services, shells,
	// secrets, push results). Service logs and shell reads have their own,
	// derived from what they may carry.
	MaxReplyBytes = 4 << 20
	// MaxServiceLogsReplyBytes bounds a service logs reply: the whole 1 MiB
	// log with every byte escaped as \u00XX is 6 MiB.
	MaxServiceLogsReplyBytes = 8 << 20
	// MaxErrorBytes bounds the body of an error reply that is read.
	MaxErrorBytes = 64 << 10
	// MaxHeaderBytes bounds reply headers.
	MaxHeaderBytes = 64 << 10
)

// Time bounds of guest calls. Every call has a deadline derived from its
// own timeout plus a grace, so a guest that stops answering (hung, stopped,
// starved) fails the call with ErrUnavailable instead of hanging the host.
const (
	// HealthTimeout bounds a health call: the agent answers at once.
	HealthTimeout = 5 * time.Second
	// CallTimeout bounds calls that do no waiting of their own in the
	// guest (lists, status, logs, shell writes, secrets, shutdown); a TCG
	// guest under load still answers well within it.
	CallTimeout = 15 * time.Second
	// ExecGrace is added to an exec's timeout: after the kill the agent
	// still drains pipes (250 ms) and syncs /workspace.
	ExecGrace = 5 * time.Second
	// TransferIdleTimeout is the window in which a push or pull must move
	// TransferMinProgress bytes (their size, not a timeout, sets their
	// length).
	TransferIdleTimeout = 60 * time.Second
	// TransferMinProgress is how many bytes a push or pull must move in
	// each TransferIdleTimeout window (a trickle is as good as silence).
	TransferMinProgress = 64 << 10
	// PushDiskMinRate is the slowest a push through the transfer disk may
	// go on top of one TransferIdleTimeout, and PushDiskFullRate the
	// slowest it may go over the whole disk: however long the push, the
	// call lasts at most the time to extract the entire transfer disk at
	// that rate (an 8 GiB disk: 60 s + 17 min), where the guest moves the
	// bytes at host speed (~300 MB/s measured under TCG).
	PushDiskMinRate  = 1 << 20
	PushDiskFullRate = 8 << 20
)

// The deadlines in use; tests shorten them.
var (
	execGrace      = ExecGrace
	callTimeout    = CallTimeout
	transferWindow = TransferIdleTimeout
)

// DecodeExecStream reads an exec response (newline-delimited Events) up to
// and including its exit event and returns the result. Output is passed to
// onOutput (if not nil) as it arrives and assembled into the result's
// Stdout and Stderr, each capped at maxOutput bytes (DefaultMaxOutputBytes
// when <= 0) and marked truncated beyond; the guest's own output fields in
// the result are ignored. Memory use is bounded by MaxEventLineBytes plus
// four times maxOutput (the buffers and the result's strings), whatever
// the stream holds. A stream that ends without
// an exit event, or holds a line that is too long or not an event, fails
// with ErrUnavailable; an error event fails with its own category.
func DecodeExecStream(r io.Reader, maxOutput int64, onOutput func(stream string, p []byte)) (ExecResult, error) {
	if maxOutput <= 0 {
		maxOutput = DefaultMaxOutputBytes
	}
	stdout, stderr := newCapped(maxOutput), newCapped(maxOutput)
	br := bufio.NewReaderSize(r, MaxEventLineBytes)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return ExecResult{}, errdefs.New(errdefs.ErrUnavailable, "", "exec: the agent sent an event line longer than %d bytes", MaxEventLineBytes)
		}
		if err != nil && (!errors.Is(err, io.EOF) || len(bytes.TrimSpace(line)) == 0) {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return ExecResult{}, errdefs.Wrap(errdefs.ErrUnavailable, err, unavailableHint, "exec: output stream ended before the exit status")
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		var ev Event
		if jerr := json.Unmarshal(line, &ev); jerr != nil {
			return ExecResult{}, errdefs.Wrap(errdefs.ErrUnavailable, jerr, "", "exec: the agent sent a malformed event")
		}
		switch ev.Type {
		case EventStdout, EventStderr:
			c := stdout
			if ev.Type == EventStderr {
				c = stderr
			}
			if live := c.add(ev.Data); onOutput != nil && len(live) > 0 {
				onOutput(ev.Type, live)
			}
		case EventElided:
			c := stdout
			if ev.Stream == EventStderr {
				c = stderr
			} else if ev.Stream != EventStdout {
				break
			}
			if marker := c.startTail(ev.Elided); onOutput != nil {
				onOutput(ev.Stream, marker)
			}
		case EventExit:
			if ev.Result == nil {
				return ExecResult{}, errdefs.New(errdefs.ErrUnavailable, "", "exec: exit event without a result")
			}
			res := *ev.Result
			res.Stdout, res.Stderr = string(stdout.ht.Bytes()), string(stderr.ht.Bytes())
			res.StdoutTruncated = res.StdoutTruncated || stdout.ht.Elided() > 0
			res.StderrTruncated = res.StderrTruncated || stderr.ht.Elided() > 0
			return res, nil
		case EventError:
			er := ErrorResponse{Error: "unknown error"}
			if ev.Error != nil {
				er = *ev.Error
			}
			return ExecResult{}, fmt.Errorf("exec: agent: %w", er.Err(0))
		}
		// Unknown event types are skipped: a newer agent may add some.
		if err != nil { // io.EOF after a last line without a newline
			return ExecResult{}, errdefs.Wrap(errdefs.ErrUnavailable, io.ErrUnexpectedEOF, unavailableHint, "exec: output stream ended before the exit status")
		}
	}
}

// capped keeps the head and tail of one output stream (HeadTail) and
// bounds what it passes on live: the first limit bytes, then after an
// elided event the marker and up to half a limit of tail, whatever a guest
// sends.
type capped struct {
	ht        *HeadTail
	limit     int64
	liveLeft  int64
	tailStart bool
}

func newCapped(limit int64) *capped {
	return &capped{ht: NewHeadTail(limit), limit: limit, liveLeft: limit}
}

// add keeps p and returns the part to pass on live.
func (c *capped) add(p []byte) []byte {
	c.ht.Add(p)
	n := min(int64(len(p)), max(c.liveLeft, 0))
	c.liveLeft -= n
	return p[:n]
}

// startTail handles an elided event and returns the marker line to pass
// on; only the first one counts.
func (c *capped) startTail(n int64) []byte {
	if c.tailStart {
		return nil
	}
	c.tailStart = true
	c.ht.StartTail(n)
	c.liveLeft = c.limit / 2
	return []byte("\n" + ElisionMarker(c.ht.Elided()) + "\n")
}

// DecodeReply decodes a JSON reply body of at most limit bytes into out. A
// longer or malformed body fails with ErrUnavailable.
func DecodeReply(r io.Reader, limit int64, out any) error {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return errdefs.Wrap(errdefs.ErrUnavailable, err, unavailableHint, "read reply")
	}
	if int64(len(data)) > limit {
		return errdefs.New(errdefs.ErrUnavailable, "", "the agent sent a reply larger than %d bytes", limit)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return errdefs.Wrap(errdefs.ErrUnavailable, err, "", "the agent sent a malformed reply")
	}
	return nil
}

// MaxListItems bounds the entries of a list reply (services, shells): a
// 4 MiB reply of "{}," would otherwise decode into hundreds of MiB of
// structs.
const MaxListItems = 4096

// decodeList decodes the array under key in the JSON object b, refusing
// more than MaxListItems entries before it allocates them. Other keys are
// skipped; a missing key or null gives nil.
func decodeList[T any](b []byte, key string) ([]T, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("want a JSON object with %q", key)
	}
	var out []T
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		if k, _ := tok.(string); k != key {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, err
			}
			continue
		}
		tok, err = dec.Token()
		if err != nil {
			return nil, err
		}
		if tok == nil {
			continue
		}
		if tok != json.Delim('[') {
			return nil, fmt.Errorf("%q is not a list", key)
		}
		for dec.More() {
			if len(out) == MaxListItems {
				return nil, fmt.Errorf("%q has more than %d entries", key, MaxListItems)
			}
			var v T
			if err := dec.Decode(&v); err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		if _, err := dec.Token(); err != nil {
			return nil, err
		}
	}
	_, err := dec.Token()
	return out, err
}

// UnmarshalJSON bounds the list (MaxListItems) while decoding it.
func (l *ServiceList) UnmarshalJSON(b []byte) (err error) {
	l.Services, err = decodeList[ServiceStatus](b, "services")
	return err
}

// UnmarshalJSON bounds the list (MaxListItems) while decoding it.
func (l *ShellList) UnmarshalJSON(b []byte) (err error) {
	l.Shells, err = decodeList[ShellInfo](b, "shells")
	return err
}
