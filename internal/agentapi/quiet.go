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
// An exec that asks for one (ExecRequest.Quiet) ends, after the command
// and the sync of /workspace, with a quiet event when the guest is quiet:
// no user process left, no other call under way. Its epoch names that
// moment; its manifest lists the upper layer then. /workspace's disk then
// holds exactly that state, so the host can take the next checkpoint from
// the disk alone and run the next command with ExecQuiet: the agent runs
// it only if nothing happened since the epoch (no call that may change
// anything, no user process), and refuses it otherwise, before running
// anything, so the host can take the checkpoint the slow way.

// PathExecQuiet is PathExec that runs only if the guest is still as its
// quiet report of epoch ?expect=N said. An agent that predates it answers
// 404: nothing runs either.
const PathExecQuiet = "/v1/exec/quiet"

// EventQuiet is the exec stream's quiet report (before the exit event).
const EventQuiet = "quiet"

// QuietRequest asks an exec for a quiet report.
type QuietRequest struct {
	// Have is the epoch of the manifest the host holds (0: none): a report
	// whose upper layer has not changed since refers to it (SameAs)
	// instead of listing it again.
	Have uint64 `json:"have,omitempty"`
	// Delta lets the report list only what changed since the listing of
	// epoch Have (QuietReport.Delta) instead of the whole upper layer.
	Delta bool `json:"delta,omitempty"`
}

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

// MaxQuietManifestBytes bounds a quiet report's manifest (it travels in
// one exec event line); a larger upper layer gets no report.
const MaxQuietManifestBytes = MaxEventLineBytes - 4<<10

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
