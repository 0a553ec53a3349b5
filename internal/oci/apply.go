package oci

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// Whiteout names of the OCI image spec (layer.md, "Whiteouts").
const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// ErrDigestMismatch is wrapped by Apply when a layer's bytes do not hash to
// the digest its manifest or config names.
var ErrDigestMismatch = errors.New("layer digest mismatch")

// ApplyResult says what Apply wrote.
type ApplyResult struct {
	Layers       int
	Files        int
	Bytes        int64 // regular file bytes unpacked
	Downloaded   int64 // layer bytes read (compressed where the layers are)
	Skipped      []tarutil.Skip
	SkippedCount int // device nodes, fifos, sockets: the guest mounts its own /dev
	Entries      int // tar entries read, all layers together
}

// errTooSlow is the cancel cause of an Apply that ran past its MaxDuration.
var errTooSlow = errors.New("image took too long to download and unpack")

// tooManyEntries explains an image over the entry cap.
func tooManyEntries(err error, format string, args ...any) error {
	return errdefs.Wrap(errdefs.ErrInvalidArgument, err,
		"an image this large is likely hostile; raise $PYRO_MAX_IMAGE_ENTRIES to allow it",
		"%s holds too many files and directories", fmt.Sprintf(format, args...))
}

// Apply downloads the layers in order and applies them to dest (which
// should be empty): regular files, directories, symlinks and hard links
// with their owners and modes, whiteouts removing what lower layers wrote.
// Every entry goes through tarutil's checks (no absolute paths, no "..",
// no writing through symlinks, hard links confined to dest); device nodes,
// fifos and sockets are skipped and listed. Each layer's bytes are checked
// against its manifest digest and its config diff_id: a mismatch is
// ErrDigestMismatch. progress, if set, gets the bytes read so far of the
// total declared. The layers together may hold at most Options.MaxEntries
// entries, and the whole takes at most Options.MaxDuration. On error dest
// holds a partial tree: the caller removes it. Restoring owners needs root.
func (im *Image) Apply(ctx context.Context, dest string, progress func(done, total int64)) (ApplyResult, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, im.maxDuration, errTooSlow)
	defer cancel()
	res, err := im.apply(ctx, dest, progress)
	if err != nil && errors.Is(context.Cause(ctx), errTooSlow) {
		return res, errdefs.Wrap(errdefs.ErrUnavailable, errTooSlow,
			"try again, use a closer registry or mirror, or raise $PYRO_MAX_IMAGE_SECONDS",
			"image %s: downloading and unpacking its layers took longer than %s", im.Source, im.maxDuration)
	}
	return res, err
}

func (im *Image) apply(ctx context.Context, dest string, progress func(done, total int64)) (ApplyResult, error) {
	res := ApplyResult{}
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return res, err
	}
	root, err := os.OpenRoot(dest)
	if err != nil {
		return res, err
	}
	defer root.Close()
	total := im.CompressedBytes()
	var unpacked int64
	for i, l := range im.layers {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		n, err := im.applyLayer(ctx, root, dest, i, l, &res, &unpacked, func(done int64) {
			if progress != nil {
				progress(res.Downloaded+done, total)
			}
		})
		res.Downloaded += n
		if err != nil {
			return res, err
		}
		res.Layers++
	}
	return res, nil
}

func (im *Image) applyLayer(ctx context.Context, root *os.Root, dest string, i int, l v1.Layer, res *ApplyResult, unpacked *int64, progress func(int64)) (int64, error) {
	desc := im.descs[i]
	label := fmt.Sprintf("image %s layer %d/%d", im.Source, i+1, len(im.layers))
	// docker save writes uncompressed layers whose "compressed" form the
	// library would have to compute by compressing; they are checked by
	// diff_id alone. Everything else is read as stored and checked against
	// the manifest digest too.
	compressed := im.Source.Kind != KindDockerArchive
	var (
		rc  io.ReadCloser
		err error
	)
	if compressed {
		rc, err = l.Compressed()
	} else {
		rc, err = l.Uncompressed()
	}
	if err != nil {
		return 0, classify(im.Source, err, "fetch layer of")
	}
	defer rc.Close()
	// The layer's reader belongs to Open's context: closing it is what
	// ends a read that blocks on a stalled registry when ctx ends.
	stop := context.AfterFunc(ctx, func() { rc.Close() })
	defer stop()
	blob := &hashCounter{r: ctxReader{ctx, rc}, h: sha256.New(), progress: progress}
	// The stream a layer may be read for is bounded by the cap even when
	// the registry declared no size.
	limited := io.LimitReader(blob, im.max+1)
	var tarStream io.Reader = limited
	if compressed {
		tarStream, err = decompress(limited)
		if err != nil {
			return blob.n, fmt.Errorf("%s: %w", label, err)
		}
	}
	diff := &hashCounter{r: tarStream, h: sha256.New()}
	f := &layerFilter{root: root, label: label, written: map[string]bool{}, parents: map[string]bool{}, unpacked: unpacked, max: im.max}
	st, err := tarutil.ExtractTarWith(diff, dest, tarutil.ExtractOptions{Filter: f.filter, Owners: true, MaxEntries: max(im.maxEntries-res.Entries, 1)})
	// A layer after the cap was reached exactly may read one entry (0
	// would mean no cap) and is refused below.
	res.Entries += st.Entries
	if err == nil && res.Entries > im.maxEntries {
		err = fmt.Errorf("%w: more than %d", tarutil.ErrTooManyEntries, im.maxEntries)
	}
	res.Files += st.Files
	res.Bytes += st.Bytes
	for _, s := range st.Skipped {
		if len(res.Skipped) < tarutil.MaxSkipped {
			res.Skipped = append(res.Skipped, s)
		}
	}
	res.SkippedCount += st.SkippedCount
	if err != nil && compressed && desc.Size > 0 && blob.readErr == nil && ctx.Err() == nil {
		// A corrupted blob often breaks the tar or gzip stream before its
		// end: read the rest to tell tampering from a malformed image.
		_, _ = io.Copy(io.Discard, io.LimitReader(blob, desc.Size-blob.n))
		if blob.n == desc.Size && blob.sum() != desc.Digest.String() {
			return blob.n, mismatch(label, blob.sum(), desc.Digest.String())
		}
	}
	if err != nil {
		if blob.readErr != nil {
			return blob.n, im.readFailure(label, desc, blob, compressed, blob.readErr)
		}
		if errdefs.Category(err) != nil || ctx.Err() != nil {
			return blob.n, err
		}
		if errors.Is(err, tarutil.ErrTooManyEntries) {
			return blob.n, tooManyEntries(err, "%s (%d entries so far)", label, res.Entries)
		}
		if errors.Is(err, tarutil.ErrUnsafePath) || errors.Is(err, tarutil.ErrBadArchive) {
			return blob.n, errdefs.Wrap(errdefs.ErrInvalidArgument, err, "the image is malformed or hostile; pyro refuses it", "%s", label)
		}
		return blob.n, fmt.Errorf("%s: %w", label, err)
	}
	// Read what follows the tar's end (padding, the gzip trailer) so both
	// digests cover the whole blob.
	if _, err := io.Copy(io.Discard, diff); err != nil {
		return blob.n, im.readFailure(label, desc, blob, compressed, err)
	}
	if blob.n > im.max {
		return blob.n, errdefs.New(errdefs.ErrInvalidArgument, "raise $PYRO_MAX_IMAGE_BYTES to allow it", "%s is over the %d MiB cap", label, im.max>>20)
	}
	if compressed && desc.Digest.Hex != "" {
		if got := blob.sum(); got != desc.Digest.String() {
			return blob.n, mismatch(label, got, desc.Digest.String())
		}
	}
	if want := im.Config.RootFS.DiffIDs[i].String(); diff.sum() != want {
		return blob.n, mismatch(label+" (uncompressed)", diff.sum(), want)
	}
	return blob.n, nil
}

// readFailure explains a failed layer read: the library's own digest check
// fails at the end of a blob whose bytes do not hash right, and that is
// told apart by hashing the same bytes here.
func (im *Image) readFailure(label string, desc v1.Descriptor, blob *hashCounter, compressed bool, err error) error {
	if compressed && desc.Digest.Hex != "" && (desc.Size < 0 || blob.n >= desc.Size) && blob.sum() != desc.Digest.String() {
		return mismatch(label, blob.sum(), desc.Digest.String())
	}
	return classify(im.Source, err, "fetch layer of")
}

func mismatch(label, got, want string) error {
	return errdefs.Wrap(errdefs.ErrInvalidArgument, ErrDigestMismatch,
		"the registry or archive served corrupted or tampered data; nothing was installed",
		"%s: sha256 is %s, want %s", label, short(got), short(want))
}

func short(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if len(d) > 12 {
		d = d[:12]
	}
	return d
}

// decompress detects gzip by its magic bytes; zstd is refused by name.
func decompress(r io.Reader) (io.Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, errdefs.Wrap(errdefs.ErrInvalidArgument, err, "", "read gzip layer")
		}
		return zr, nil
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return nil, errdefs.New(errdefs.ErrInvalidArgument, "push the image with gzip layers", "zstd-compressed layers are not supported")
	}
	return br, nil
}

// hashCounter hashes and counts what is read through it.
type hashCounter struct {
	r        io.Reader
	h        hash.Hash
	n        int64
	progress func(int64)
	last     int64
	readErr  error
}

func (c *hashCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.h.Write(p[:n])
		c.n += int64(n)
		if c.progress != nil && c.n-c.last >= 1<<20 {
			c.last = c.n
			c.progress(c.n)
		}
	}
	if err != nil && err != io.EOF {
		c.readErr = err
	}
	if err == io.EOF && c.progress != nil {
		c.progress(c.n)
	}
	return n, err
}

func (c *hashCounter) sum() string { return "sha256:" + hex.EncodeToString(c.h.Sum(nil)) }

// layerFilter turns whiteout entries into removals and enforces the size
// cap; everything else goes on to tarutil.
type layerFilter struct {
	root     *os.Root
	label    string
	written  map[string]bool // entries of this layer: an opaque directory keeps them
	parents  map[string]bool // directories holding entries of this layer
	unpacked *int64
	max      int64
}

// maxEntryName bounds an image entry's name (PATH_MAX): the walks over a
// name's parents below cost time quadratic in its slashes, and a tar's
// PAX header may carry a 1 MiB name of 500,000 of them (~30 min of the
// host's CPU for one entry). No path a guest can use is longer.
const maxEntryName = 4096

func (f *layerFilter) filter(h *tar.Header, name string) (bool, error) {
	if len(name) > maxEntryName {
		return false, f.unsafe(name[:64]+"...", fmt.Sprintf("a name of %d bytes (more than %d)", len(name), maxEntryName))
	}
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		dir = "."
	}
	switch {
	case base == opaqueMarker:
		return true, f.opaque(dir)
	case strings.HasPrefix(base, whiteoutPrefix):
		target := strings.TrimPrefix(base, whiteoutPrefix)
		if target == "" || target == "." || target == ".." {
			return false, f.unsafe(name, "whiteout names no file")
		}
		return true, f.remove(path.Join(dir, target))
	}
	if h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeRegA {
		*f.unpacked += h.Size
		if *f.unpacked > f.max {
			return false, errdefs.New(errdefs.ErrInvalidArgument, "raise $PYRO_MAX_IMAGE_BYTES to allow it",
				"%s: the image unpacks to more than the %d MiB cap", f.label, f.max>>20)
		}
	}
	f.written[name] = true
	for p := path.Dir(name); p != "." && !f.parents[p]; p = path.Dir(p) {
		f.parents[p] = true
	}
	return false, nil
}

func (f *layerFilter) unsafe(name, why string) error {
	return errdefs.Wrap(errdefs.ErrInvalidArgument, fmt.Errorf("%w: %s: %s", tarutil.ErrUnsafePath, name, why),
		"the image is malformed or hostile; pyro refuses it", "%s", f.label)
}

// realParents checks that every parent of name is a real directory or
// missing: a whiteout never acts through a symlink.
func (f *layerFilter) realParents(name string) (bool, error) {
	cur := ""
	for _, el := range strings.Split(path.Dir(name), "/") {
		if el == "." {
			continue
		}
		cur = path.Join(cur, el)
		fi, err := f.root.Lstat(cur)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return false, f.unsafe(name, "whiteout goes through symlink "+cur)
		}
		if !fi.IsDir() {
			return false, nil
		}
	}
	return true, nil
}

// remove applies "<dir>/.wh.<name>": name and everything under it go.
func (f *layerFilter) remove(name string) error {
	ok, err := f.realParents(name)
	if err != nil || !ok {
		return err
	}
	if err := f.root.RemoveAll(name); err != nil {
		return fmt.Errorf("%s: whiteout %s: %w", f.label, name, err)
	}
	delete(f.written, name)
	return nil
}

// opaque applies "<dir>/.wh..wh..opq": what lower layers put in dir goes;
// what this layer put there stays.
func (f *layerFilter) opaque(dir string) error {
	if dir != "." {
		ok, err := f.realParents(dir + "/x")
		if err != nil || !ok {
			return err
		}
		fi, err := f.root.Lstat(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return f.unsafe(dir, "opaque whiteout on a symlink")
		}
		if !fi.IsDir() {
			return nil
		}
	}
	return f.clearLower(dir)
}

// clearLower removes what is in dir and was not written by this layer,
// descending into directories this layer wrote into.
func (f *layerFilter) clearLower(dir string) error {
	d, err := f.root.Open(dir)
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		p := path.Join(dir, n)
		if f.parents[p] {
			if fi, err := f.root.Lstat(p); err == nil && fi.IsDir() {
				if err := f.clearLower(p); err != nil {
					return err
				}
				continue
			}
		}
		if f.written[p] {
			continue
		}
		if err := f.root.RemoveAll(p); err != nil {
			return fmt.Errorf("%s: opaque whiteout %s: %w", f.label, p, err)
		}
	}
	return nil
}
