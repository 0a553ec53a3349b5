package agentapi

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"time"
)

// Sides of a layer change listing.
const (
	SideLower  = "lower"  // the entries as the baseline has them
	SideMerged = "merged" // the entries as /workspace has them now
)

// HeaderChanges is the reply header of a change listing: how many entries
// the upper layer changed.
const HeaderChanges = "X-Pyro-Changes"

// LayerChanges streams, as a tar (names relative to /workspace, see
// PullTar), the entries the layered /workspace's upper layer changed, read
// from side (SideLower or SideMerged). The caller closes the stream and
// bounds what it reads. A guest whose /workspace is not layered fails with
// ErrFailedPrecondition.
func (c *Client) LayerChanges(ctx context.Context, side string) (io.ReadCloser, error) {
	ctx, w, cancel := newIdleWatch(ctx, transferWindow)
	resp, err := c.doStream(ctx, http.MethodGet, PathLayerChanges+"?side="+side, nil, "")
	if err != nil {
		cancel()
		return nil, err
	}
	return &watchedBody{Reader: w.reader(resp.Body), body: resp.Body, ctx: ctx, cancel: cancel}, nil
}

// FreezeLayer freezes the upper disk's file system (flushed, writers
// blocked) until ThawLayer, or until d passes (the guest thaws it itself,
// so a host that dies meanwhile leaves no frozen guest behind).
func (c *Client) FreezeLayer(ctx context.Context, d time.Duration) error {
	var out struct{}
	return c.jsonCall(ctx, callTimeout, http.MethodPost, PathLayerFreeze+"?ms="+strconv.FormatInt(d.Milliseconds(), 10), nil, &out)
}

// ThawLayer ends a FreezeLayer.
func (c *Client) ThawLayer(ctx context.Context) error {
	var out struct{}
	return c.jsonCall(ctx, callTimeout, http.MethodPost, PathLayerThaw, nil, &out)
}
