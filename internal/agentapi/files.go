package agentapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// HeaderKind is the response header of a pull naming what the path was.
const HeaderKind = "X-Pyro-Kind"

// Values of HeaderKind.
const (
	KindDir  = "dir"
	KindFile = "file"
)

// PushResult is the reply to a files push.
type PushResult struct {
	// Files counts regular files, symlinks and hard links extracted.
	Files int `json:"files"`
	// Dirs counts directories extracted (not dest itself).
	Dirs int `json:"dirs"`
	// Bytes is the regular file content written.
	Bytes int64  `json:"bytes"`
	Dest  string `json:"dest"`
}

// PushTar streams the uncompressed tar r into the guest and extracts it
// (within, when set, is a directory dest must resolve into, symlinks
// followed)
// into the absolute guest directory dest (see the package doc). The body is
// streamed, not buffered. Unsafe entries fail with ErrInvalidArgument.
func (c *Client) PushTar(ctx context.Context, dest, within string, r io.Reader) (PushResult, error) {
	var res PushResult
	resp, err := c.doStream(ctx, http.MethodPost, PathFilesPush+"?dest="+url.QueryEscape(dest)+"&within="+url.QueryEscape(within), r, "application/x-tar")
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return res, errdefs.Wrap(errdefs.ErrUnavailable, err, unavailableHint, "read push result")
	}
	return res, nil
}

// PullTar (within: as for PushTar) asks the guest for the file or directory at the absolute guest
// path and returns the tar stream (see the package doc) and its kind,
// KindDir or KindFile. The caller closes the stream; a stream that ends
// before the tar's end marker means the pull failed. A missing path fails
// with ErrNotFound.
func (c *Client) PullTar(ctx context.Context, path, within string) (io.ReadCloser, string, error) {
	resp, err := c.doStream(ctx, http.MethodGet, PathFilesPull+"?path="+url.QueryEscape(path)+"&within="+url.QueryEscape(within), nil, "")
	if err != nil {
		return nil, "", err
	}
	return resp.Body, resp.Header.Get(HeaderKind), nil
}
