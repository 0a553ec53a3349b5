package agentapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

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
// streamed, not buffered. Unsafe entries fail with ErrInvalidArgument. The
// push fails with ErrUnavailable when fewer than TransferMinProgress bytes
// move in a TransferIdleTimeout window.
func (c *Client) PushTar(ctx context.Context, dest, within string, r io.Reader) (PushResult, error) {
	var res PushResult
	ctx, w, cancel := newIdleWatch(ctx, transferWindow)
	defer cancel()
	resp, err := c.doStream(ctx, http.MethodPost, PathFilesPush+"?dest="+url.QueryEscape(dest)+"&within="+url.QueryEscape(within), w.reader(r), "application/x-tar")
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	if err := DecodeReply(w.reader(resp.Body), MaxReplyBytes, &res); err != nil {
		if ctx.Err() != nil {
			return res, ctxErr(ctx, "push")
		}
		return res, fmt.Errorf("push: %w", err)
	}
	return res, nil
}

// PullTar (within: as for PushTar) asks the guest for the file or directory at the absolute guest
// path and returns the tar stream (see the package doc) and its kind,
// KindDir or KindFile. The caller closes the stream and bounds what it
// reads from it (the guest chooses its length); a stream that ends before
// the tar's end marker means the pull failed. A stream that moves fewer
// than TransferMinProgress bytes in a TransferIdleTimeout window fails. A missing path fails with ErrNotFound.
func (c *Client) PullTar(ctx context.Context, path, within string) (io.ReadCloser, string, error) {
	ctx, w, cancel := newIdleWatch(ctx, transferWindow)
	resp, err := c.doStream(ctx, http.MethodGet, PathFilesPull+"?path="+url.QueryEscape(path)+"&within="+url.QueryEscape(within), nil, "")
	if err != nil {
		cancel()
		return nil, "", err
	}
	return &watchedBody{Reader: w.reader(resp.Body), body: resp.Body, ctx: ctx, cancel: cancel}, resp.Header.Get(HeaderKind), nil
}

// idleWatch ends a transfer's context when fewer than
// TransferMinProgress bytes moved in a window of d: a guest that trickles
// a byte now and then must not hold a transfer (and its caller) forever.
type idleWatch struct {
	d     time.Duration
	moved atomic.Int64
	timer *time.Timer
}

func newIdleWatch(ctx context.Context, d time.Duration) (context.Context, *idleWatch, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	w := &idleWatch{d: d}
	w.timer = time.AfterFunc(d, func() {
		if w.moved.Swap(0) < TransferMinProgress {
			cancel(&guestDeadline{after: d})
			return
		}
		w.timer.Reset(d)
	})
	return ctx, w, func() { w.timer.Stop(); cancel(context.Canceled) }
}

func (w *idleWatch) add(n int) { w.moved.Add(int64(n)) }

func (w *idleWatch) reader(r io.Reader) io.Reader { return &watchedReader{r: r, w: w} }

type watchedReader struct {
	r io.Reader
	w *idleWatch
}

func (r *watchedReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.w.add(n)
	return n, err
}

// watchedBody is a pull's stream: reads explain an idle timeout, Close
// ends the watch.
type watchedBody struct {
	io.Reader
	body   io.Closer
	ctx    context.Context
	cancel context.CancelFunc
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	// An end caused by the watch (or the caller) is a failure even when the
	// stream reports it as EOF: the transfer did not finish.
	if err != nil && b.ctx.Err() != nil {
		err = ctxErr(b.ctx, "pull")
	}
	return n, err
}

func (b *watchedBody) Close() error {
	err := b.body.Close()
	b.cancel()
	return err
}

// PushDisk asks the guest to extract the uncompressed tar of length bytes
// (a multiple of 512) that the host wrote at the start of the workspace's
// transfer disk into dest, under the same rules as PushTar. The guest
// moves file content from the disk with direct I/O, so the push costs
// little guest CPU per byte. A guest without a transfer disk (or one too
// small) fails with ErrNotFound before it extracts anything: then push
// with PushTar. disk is the transfer disk's size (the host's own file):
// length must fit in it, and the call is bounded by pushDiskTimeout.
func (c *Client) PushDisk(ctx context.Context, dest, within string, length, disk int64) (PushResult, error) {
	var res PushResult
	if length <= 0 || length > disk {
		return res, errdefs.New(errdefs.ErrInvalidArgument, "", "push of %d bytes through a transfer disk of %d bytes", length, disk)
	}
	q := url.Values{"dest": {dest}, "within": {within}, "length": {strconv.FormatInt(length, 10)}}
	err := c.jsonCall(ctx, pushDiskTimeout(length, disk), http.MethodPost, PathFilesPushDisk+"?"+q.Encode(), nil, &res)
	return res, err
}

// pushDiskTimeout is TransferIdleTimeout plus a floor of PushDiskMinRate
// for the push's length bytes, capped at PushDiskFullRate for the whole
// disk of disk bytes: the push's length alone does not stretch the call.
func pushDiskTimeout(length, disk int64) time.Duration {
	return transferWindow + time.Duration(min(length/PushDiskMinRate, disk/PushDiskFullRate))*time.Second
}
