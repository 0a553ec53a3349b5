package agentapi

import (
	"context"
	"net/http"
	"strconv"
	"time"
)

// Release of a layered /workspace to the host (a host-side push into a
// running workspace): the guest syncs and unmounts /workspace and its
// upper disk, so that the host may write a new upper layer and switch
// QEMU's disk to it, then mounts them again.
//
// Call order: ReleaseWorkspace, then RemountWorkspace (drop set once the
// disk may have changed under the guest). A release lasts at most d: the
// guest then remounts by itself, so a host that dies meanwhile leaves
// /workspace mounted; the host switches the disk only well within d.
// Releasing a released (or frozen) /workspace fails; remounting a mounted
// one is a no-op.
const (
	// PathLayerRelease (POST ?ms=N[&manifest=1[&expect=E]]) releases
	// /workspace; something in the guest holding it fails the call with
	// ErrFailedPrecondition. With manifest=1 the reply lists the upper
	// layer (LayerManifest) as it was released; with expect=E too, a guest
	// still quiet at epoch E (as PathExecQuiet claims it) lists nothing and
	// says {"same_as": E}.
	PathLayerRelease = "/v1/layers/release"
	// PathLayerRemount (POST ?drop=1) mounts it again.
	PathLayerRemount = "/v1/layers/remount"
)

// ReleaseWorkspace unmounts the guest's layered /workspace for at most d.
func (c *Client) ReleaseWorkspace(ctx context.Context, d time.Duration) error {
	var out struct{}
	return c.jsonCall(ctx, callTimeout, http.MethodPost, PathLayerRelease+"?ms="+strconv.FormatInt(d.Milliseconds(), 10), nil, &out)
}

// RemountWorkspace mounts a released /workspace again; with drop, the
// guest first forgets every block of the upper disk it cached.
func (c *Client) RemountWorkspace(ctx context.Context, drop bool) error {
	var out struct{}
	q := ""
	if drop {
		q = "?drop=1"
	}
	return c.jsonCall(ctx, callTimeout, http.MethodPost, PathLayerRemount+q, nil, &out)
}

// ReleaseWorkspaceListed is ReleaseWorkspace that also lists the upper
// layer as the guest let go of it: after /workspace's overlay is unmounted
// (nothing in the guest can change it any more) and before its disk is.
// A host push that makes a checkpoint of the released layer needs that
// listing (its diff --since); listing before the release would miss a
// write in between. ok is false when the agent predates it (it released
// /workspace but sent no listing).
func (c *Client) ReleaseWorkspaceListed(ctx context.Context, d time.Duration) (m LayerManifest, ok bool, err error) {
	var out listedReply
	err = c.jsonCallLimit(ctx, transferWindow, MaxManifestBytes, http.MethodPost,
		PathLayerRelease+"?manifest=1&ms="+strconv.FormatInt(d.Milliseconds(), 10), nil, &out)
	if err != nil || out.Entries == nil {
		return m, false, err
	}
	return LayerManifest{Entries: *out.Entries}, true, nil
}

// ReleaseWorkspaceSince is ReleaseWorkspaceListed for a host that holds
// the listing of the guest's quiet epoch expect (an exec's quiet report):
// a guest still quiet at expect (nothing ran since that report, no other
// call under way, no user process: the claim of PathExecQuiet) releases
// /workspace without walking and encoding its upper layer again, and same
// is true: the layer is as that listing says. Otherwise, and from an agent
// that predates it, the reply is ReleaseWorkspaceListed's.
func (c *Client) ReleaseWorkspaceSince(ctx context.Context, d time.Duration, expect uint64) (m LayerManifest, same, ok bool, err error) {
	var out listedReply
	err = c.jsonCallLimit(ctx, transferWindow, MaxManifestBytes, http.MethodPost,
		PathLayerRelease+"?manifest=1&expect="+strconv.FormatUint(expect, 10)+"&ms="+strconv.FormatInt(d.Milliseconds(), 10), nil, &out)
	if err != nil {
		return m, false, false, err
	}
	if out.Entries == nil {
		// Same only when the guest names the epoch asked about.
		return m, expect != 0 && out.SameAs == expect, expect != 0 && out.SameAs == expect, nil
	}
	return LayerManifest{Entries: *out.Entries}, false, true, nil
}
