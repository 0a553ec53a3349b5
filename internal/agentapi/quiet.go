package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// Quiet reports make a checkpoint before an exec cost no guest round trip.
// After an exec has answered, the host (the workspace's supervisor, off
// the exec's path) asks GET PathQuiet: the agent waits for the calls under
// way to end, and when no user process is left it syncs /workspace and
// answers with a report whose epoch names that moment and whose listing is
// the upper layer then (null when the guest is not quiet). A GET moves no
// epoch. /workspace's disk then holds exactly that state, so the host can
// take the next checkpoint from the disk alone and run the next command
// with ExecQuiet: the agent runs it only if nothing happened since the
// epoch (no call that may change anything, no user process), and refuses
// it otherwise, before running anything, so the host can take the
// checkpoint the slow way.

// PathExecQuiet is PathExec that runs only if the guest is still as its
// quiet report of epoch ?expect=N said. An agent that predates it answers
// 404: nothing runs either.
const PathExecQuiet = "/v1/exec/quiet"

// PathQuiet is the quiet report: GET ?have=N&delta=1. have is the epoch of
// the listing the host holds (0: none): a report whose upper layer has not
// changed since refers to it (SameAs) instead of listing it again; with
// delta=1 the report may say only what changed since it (Delta).
const PathQuiet = "/v1/quiet"

// QuietReport says the guest was quiet at Epoch, with /workspace synced.
type QuietReport struct {
	Epoch uint64 `json:"epoch"`
	// SameAs is the request's Have when the upper layer has not changed
	// since; else Delta says what changed since that listing, or Manifest
	// lists it whole.
	SameAs   uint64         `json:"same_as,omitempty"`
	Delta    *LayerDelta    `json:"delta,omitempty"`
	Manifest *LayerManifest `json:"manifest,omitempty"`
}

// LayerDelta turns the listing of epoch Base into the report's: every
// path in Removed goes, with everything below it, then every entry in
// Changed is put in (a new directory comes with its whole subtree).
type LayerDelta struct {
	Base    uint64       `json:"base"`
	Removed []string     `json:"removed,omitempty"`
	Changed []LayerEntry `json:"changed,omitempty"`
}

// MaxQuietManifestBytes bounds a quiet report's manifest; a larger upper
// layer gets no report.
const MaxQuietManifestBytes = MaxEventLineBytes - 4<<10

// maxQuietReplyBytes bounds a quiet report reply on the host.
const maxQuietReplyBytes = MaxEventLineBytes

// quietTimeout bounds the quiet report call: the agent's own wait for the
// calls under way (2 s), its sync and its listing.
var quietTimeout = 10 * time.Second

// Quiet asks for the guest's quiet report (see above); nil when the guest
// is not quiet. have is the epoch of the listing the host holds.
func (c *Client) Quiet(ctx context.Context, have uint64) (*QuietReport, error) {
	var rep *QuietReport
	err := c.jsonCallLimit(ctx, quietTimeout, maxQuietReplyBytes, http.MethodGet, PathQuiet+"?delta=1&have="+strconv.FormatUint(have, 10), nil, &rep)
	if err != nil {
		return nil, err
	}
	return rep, nil
}

// ExecQuiet is Exec through PathExecQuiet: ran is false when the agent
// refused (the guest changed since the quiet report of epoch expect, or
// the agent predates the call) and nothing ran; err then says why.
func (c *Client) ExecQuiet(ctx context.Context, req ExecRequest, expect uint64, onOutput func(stream string, p []byte)) (res ExecResult, ran bool, err error) {
	body, err := json.Marshal(req)
	if err != nil {
		return ExecResult{}, false, fmt.Errorf("encode exec request: %w", err)
	}
	if req.TimeoutMS > 0 {
		var cancel context.CancelFunc
		ctx, cancel = withGuestDeadline(ctx, time.Duration(req.TimeoutMS)*time.Millisecond+execGrace)
		defer cancel()
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+PathExecQuiet+"?expect="+strconv.FormatUint(expect, 10), bytes.NewReader(body))
	if err != nil {
		return ExecResult{}, false, fmt.Errorf("build agent request: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(hreq)
	if err != nil {
		// Whether the request reached the agent is unknown: the caller
		// treats it as a failed exec, as Exec would.
		if ctx.Err() != nil {
			return ExecResult{}, true, ctxErr(ctx, "exec")
		}
		return ExecResult{}, true, fmt.Errorf("exec: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var er ErrorResponse
		data, _ := io.ReadAll(io.LimitReader(resp.Body, MaxErrorBytes))
		if json.Unmarshal(data, &er) != nil || er.Error == "" {
			er = ErrorResponse{Error: fmt.Sprintf("http status %d", resp.StatusCode)}
		}
		return ExecResult{}, false, er.Err(resp.StatusCode)
	}
	res, err = DecodeExecStream(resp.Body, req.MaxOutputBytes, onOutput)
	if ctx.Err() != nil {
		return ExecResult{}, true, ctxErr(ctx, "exec")
	}
	return res, true, err
}
