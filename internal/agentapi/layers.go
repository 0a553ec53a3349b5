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

// FreezeLayerManifest is FreezeLayer that also lists the frozen upper
// layer (LayerManifest) in the same call: a checkpoint needs both, and
// each call costs the guest a round trip. ok is false when the agent
// predates it (it froze the layer but sent no listing).
func (c *Client) FreezeLayerManifest(ctx context.Context, d time.Duration) (m LayerManifest, ok bool, err error) {
	var out listedReply
	err = c.jsonCallLimit(ctx, transferWindow, MaxManifestBytes, http.MethodPost,
		PathLayerFreeze+"?manifest=1&ms="+strconv.FormatInt(d.Milliseconds(), 10), nil, &out)
	if err != nil || out.Entries == nil {
		return m, false, err
	}
	return LayerManifest{Entries: *out.Entries}, true, nil
}

// ThawLayer ends a FreezeLayer.
func (c *Client) ThawLayer(ctx context.Context) error {
	var out struct{}
	return c.jsonCall(ctx, callTimeout, http.MethodPost, PathLayerThaw, nil, &out)
}

// LayerEntry is one entry of a layered /workspace's upper layer: a path
// the workspace changed since its baseline, with what identifies its
// state (a write changes ctime, a replacement the inode).
type LayerEntry struct {
	Path    string `json:"p"`
	Kind    string `json:"k"` // "file", "dir", "symlink" or "whiteout" (deleted)
	Opaque  bool   `json:"o,omitempty"`
	Size    int64  `json:"s"`
	Mode    uint32 `json:"m"`
	MtimeNS int64  `json:"mt"`
	CtimeNS int64  `json:"ct"`
	Ino     uint64 `json:"i"`
}

// LayerManifest lists the upper layer's entries, parents before children.
type LayerManifest struct {
	Entries []LayerEntry `json:"entries"`
}

// MaxManifestBytes bounds a manifest reply.
const MaxManifestBytes = 256 << 20

// LayerManifest lists the upper layer's entries.
func (c *Client) LayerManifest(ctx context.Context) (LayerManifest, error) {
	var m LayerManifest
	err := c.jsonCallLimit(ctx, transferWindow, MaxManifestBytes, http.MethodGet, PathLayerManifest, nil, &m)
	return m, err
}
