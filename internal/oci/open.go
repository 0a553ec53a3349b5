package oci

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// The one platform pyro guests run.
const (
	PlatformOS   = "linux"
	PlatformArch = "amd64"
)

// Options tune registry access.
type Options struct {
	// Keychain finds credentials; default authn.DefaultKeychain
	// (~/.docker/config.json and its credential helpers).
	Keychain authn.Keychain
	// Transport replaces the HTTP transport (tests).
	Transport http.RoundTripper
	// MaxBytes caps an image: the sum of its layer sizes as the registry
	// declares them, and again the bytes its layers unpack to. <= 0 means
	// DefaultMaxBytes.
	MaxBytes int64
	// TempDir holds an unpacked oci-archive while it is read.
	TempDir string
	// MaxEntries caps the tar entries of all an image's layers together
	// (and of an oci-archive): millions of empty files or directories
	// cost inodes and time while staying under MaxBytes. <= 0 means
	// DefaultMaxEntries.
	MaxEntries int
	// MaxDuration bounds Apply (downloading and unpacking every layer): a
	// registry that trickles bytes must not hold a pull forever. <= 0
	// means DefaultMaxDuration.
	MaxDuration time.Duration
}

// DefaultMaxBytes is the image size cap unless $PYRO_MAX_IMAGE_BYTES or
// Options.MaxBytes says otherwise.
const DefaultMaxBytes int64 = 8 << 30

func (o Options) maxBytes() int64 {
	if o.MaxBytes > 0 {
		return o.MaxBytes
	}
	return DefaultMaxBytes
}

// DefaultMaxEntries is the image entry cap unless $PYRO_MAX_IMAGE_ENTRIES or
// Options.MaxEntries says otherwise: large real images hold a few hundred
// thousand entries.
const DefaultMaxEntries = 1 << 20

func (o Options) maxEntries() int {
	if o.MaxEntries > 0 {
		return o.MaxEntries
	}
	return DefaultMaxEntries
}

// DefaultMaxDuration is the time bound of Apply unless
// $PYRO_MAX_IMAGE_SECONDS or Options.MaxDuration says otherwise.
const DefaultMaxDuration = time.Hour

func (o Options) maxDuration() time.Duration {
	if o.MaxDuration > 0 {
		return o.MaxDuration
	}
	return DefaultMaxDuration
}

func (o Options) remote(ctx context.Context) []remote.Option {
	kc := o.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	opts := []remote.Option{
		remote.WithContext(ctx), remote.WithAuthFromKeychain(kc),
		remote.WithPlatform(v1.Platform{OS: PlatformOS, Architecture: PlatformArch}),
		// An unreachable registry should fail in a second, not after the
		// default 13 s of retries.
		remote.WithRetryBackoff(remote.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Steps: 2}),
		remote.WithUserAgent("pyro"),
	}
	if o.Transport != nil {
		opts = append(opts, remote.WithTransport(o.Transport))
	}
	return opts
}

// Image is an opened image: its manifest digest, config and layers.
type Image struct {
	Source Source
	Digest string // manifest digest, "sha256:..."
	Config v1.ConfigFile
	img    v1.Image
	layers []v1.Layer
	descs  []v1.Descriptor // per layer, as the manifest declares it (Size -1 when unknown)
	max    int64
	// maxEntries and maxDuration bound Apply (Options.MaxEntries,
	// Options.MaxDuration).
	maxEntries  int
	maxDuration time.Duration
	close       func()
}

// Close removes what Open unpacked.
func (im *Image) Close() {
	if im.close != nil {
		im.close()
	}
}

// CompressedBytes is the sum of the declared layer sizes.
func (im *Image) CompressedBytes() int64 {
	var n int64
	for _, d := range im.descs {
		if d.Size > 0 {
			n += d.Size
		}
	}
	return n
}

// Open resolves src to its linux/amd64 image and reads its manifest and
// config. Nothing is downloaded beyond those.
func Open(ctx context.Context, src Source, opts Options) (*Image, error) {
	var (
		img     v1.Image
		err     error
		cleanup func()
	)
	switch src.Kind {
	case KindRegistry:
		img, err = openRemote(ctx, src, opts)
	case KindDockerArchive:
		if _, serr := os.Stat(src.Path); serr != nil {
			return nil, errdefs.Wrap(errdefs.ErrNotFound, serr, "", "open image archive %q", src.Path)
		}
		img, err = tarball.ImageFromPath(src.Path, nil)
		if err != nil {
			err = errdefs.Wrap(errdefs.ErrInvalidArgument, err, "make it with `docker save IMAGE -o FILE`", "read docker archive %q", src.Path)
		}
	case KindOCIArchive:
		img, cleanup, err = openOCIArchive(ctx, src, opts)
	default:
		err = fmt.Errorf("unknown image source kind %q", src.Kind)
	}
	if err != nil {
		return nil, err
	}
	im := &Image{Source: src, img: img, max: opts.maxBytes(), maxEntries: opts.maxEntries(), maxDuration: opts.maxDuration(), close: cleanup}
	fail := func(err error) (*Image, error) {
		im.Close()
		return nil, err
	}
	d, err := img.Digest()
	if err != nil {
		return fail(classify(src, err, "read manifest of"))
	}
	im.Digest = d.String()
	cfg, err := img.ConfigFile()
	if err != nil {
		return fail(classify(src, err, "read config of"))
	}
	im.Config = *cfg
	if err := checkPlatform(src, cfg.OS, cfg.Architecture); err != nil {
		return fail(err)
	}
	if im.layers, err = img.Layers(); err != nil {
		return fail(classify(src, err, "read layers of"))
	}
	if len(cfg.RootFS.DiffIDs) != len(im.layers) {
		return fail(errdefs.New(errdefs.ErrInvalidArgument, "", "image %s: its config lists %d layers and its manifest %d", src, len(cfg.RootFS.DiffIDs), len(im.layers)))
	}
	if m, err := img.Manifest(); err == nil && len(m.Layers) == len(im.layers) {
		im.descs = m.Layers
	} else {
		im.descs = make([]v1.Descriptor, len(im.layers))
		for i := range im.descs {
			im.descs[i].Size = -1
		}
	}
	if n := im.CompressedBytes(); n > im.max {
		return fail(errdefs.New(errdefs.ErrInvalidArgument, "raise $PYRO_MAX_IMAGE_BYTES to allow it",
			"image %s is %d MiB compressed, over the %d MiB cap", src, n>>20, im.max>>20))
	}
	return im, nil
}

func checkPlatform(src Source, os, arch string) error {
	if (os == "" || os == PlatformOS) && (arch == "" || arch == PlatformArch) {
		return nil
	}
	return errdefs.New(errdefs.ErrInvalidArgument, "pyro guests are linux/amd64: pick an amd64 image",
		"image %s is for %s/%s, not %s/%s", src, os, arch, PlatformOS, PlatformArch)
}

func openRemote(ctx context.Context, src Source, opts Options) (v1.Image, error) {
	desc, err := remote.Get(src.Ref, opts.remote(ctx)...)
	if err != nil {
		return nil, classify(src, err, "resolve")
	}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, classify(src, err, "read index of")
		}
		return pickPlatform(src, idx, 0)
	}
	img, err := desc.Image()
	if err != nil {
		return nil, classify(src, err, "read")
	}
	return img, nil
}

// pickPlatform finds the linux/amd64 image of an index (nested indexes
// are followed two levels deep). A manifest without a platform is taken
// only when it is the index's one image; its config is checked later.
func pickPlatform(src Source, idx v1.ImageIndex, depth int) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, classify(src, err, "read index of")
	}
	var seen []string
	var lone []v1.Descriptor
	for _, d := range im.Manifests {
		switch {
		case d.MediaType.IsIndex() && depth < 2:
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, classify(src, err, "read index of")
			}
			if img, err := pickPlatform(src, child, depth+1); err == nil {
				return img, nil
			}
		case !d.MediaType.IsImage():
			// attestations, signatures: not images to run
		case d.Platform == nil:
			lone = append(lone, d)
		case d.Platform.OS == PlatformOS && d.Platform.Architecture == PlatformArch:
			img, err := idx.Image(d.Digest)
			if err != nil {
				return nil, classify(src, err, "read")
			}
			return img, nil
		default:
			if d.Platform.OS != "unknown" {
				seen = append(seen, d.Platform.String())
			}
		}
	}
	if len(lone) == 1 && len(seen) == 0 {
		img, err := idx.Image(lone[0].Digest)
		if err != nil {
			return nil, classify(src, err, "read")
		}
		return img, nil
	}
	has := "no platforms"
	if len(seen) > 0 {
		has = strings.Join(seen, ", ")
	}
	return nil, errdefs.New(errdefs.ErrInvalidArgument, "pyro guests are linux/amd64: pick an image built for amd64",
		"image %s has no %s/%s variant (it has %s)", src, PlatformOS, PlatformArch, has)
}

// openOCIArchive unpacks an OCI layout tarball (as `skopeo copy ...
// oci-archive:` or `docker buildx --output type=oci` write it) into a
// temporary directory and opens the index in it.
func openOCIArchive(ctx context.Context, src Source, opts Options) (v1.Image, func(), error) {
	rc, err := tarutil.OpenArchive(src.Path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, errdefs.Wrap(errdefs.ErrNotFound, err, "", "open image archive %q", src.Path)
		}
		return nil, nil, fmt.Errorf("open image archive %q: %w", src.Path, err)
	}
	defer rc.Close()
	dir, err := os.MkdirTemp(opts.TempDir, "oci-archive-")
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() { _ = os.RemoveAll(dir) }
	var total int64
	max := opts.maxBytes()
	_, err = tarutil.ExtractTarWith(ctxReader{ctx, rc}, dir, tarutil.ExtractOptions{
		Untrusted: true, Umask: 0o022, MaxEntries: opts.maxEntries(),
		Filter: func(h *tar.Header, _ string) (bool, error) {
			total += h.Size
			if total > max {
				return false, errdefs.New(errdefs.ErrInvalidArgument, "raise $PYRO_MAX_IMAGE_BYTES to allow it",
					"image archive %q is over the %d MiB cap", src.Path, max>>20)
			}
			return false, nil
		},
	})
	if err != nil {
		cleanup()
		return nil, nil, wrapArchiveErr(src, err)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		cleanup()
		return nil, nil, errdefs.Wrap(errdefs.ErrInvalidArgument, err, "an oci-archive is a tar of an OCI image layout (oci-layout, index.json, blobs/)", "read OCI archive %q", src.Path)
	}
	img, err := pickPlatform(src, idx, 0)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return img, cleanup, nil
}

func wrapArchiveErr(src Source, err error) error {
	if errdefs.Category(err) != nil {
		return err
	}
	if errors.Is(err, tarutil.ErrTooManyEntries) {
		return tooManyEntries(err, "image archive %q", src.Path)
	}
	if errors.Is(err, tarutil.ErrUnsafePath) || errors.Is(err, tarutil.ErrBadArchive) {
		return errdefs.Wrap(errdefs.ErrInvalidArgument, err, "", "image %s", src)
	}
	return fmt.Errorf("image %s: %w", src, err)
}

// classify maps registry and transport failures to error categories.
func classify(src Source, err error, verb string) error {
	if errdefs.Category(err) != nil {
		return err
	}
	var te *transport.Error
	if errors.As(err, &te) {
		switch {
		case te.StatusCode == http.StatusNotFound || hasCode(te, transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode):
			return errdefs.Wrap(errdefs.ErrNotFound, err, "check the repository name and tag", "%s image %s", verb, src)
		case te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden:
			return errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "log in with `docker login "+src.registry()+"`: pyro reads ~/.docker/config.json and its credential helpers", "%s image %s: access denied", verb, src)
		}
		return errdefs.Wrap(errdefs.ErrUnavailable, err, "", "%s image %s", verb, src)
	}
	var ne net.Error
	var ue *url.Error
	var oe *net.OpError
	if errors.As(err, &ne) || errors.As(err, &ue) || errors.As(err, &oe) {
		return errdefs.Wrap(errdefs.ErrUnavailable, err, "check that the registry "+src.registry()+" is reachable", "%s image %s", verb, src)
	}
	return fmt.Errorf("%s image %s: %w", verb, src, err)
}

func hasCode(te *transport.Error, codes ...transport.ErrorCode) bool {
	for _, d := range te.Errors {
		for _, c := range codes {
			if d.Code == c {
				return true
			}
		}
	}
	return false
}

func (s Source) registry() string {
	if s.Kind == KindRegistry {
		return s.Ref.Context().RegistryStr()
	}
	return s.Kind
}

// ctxReader ends a read when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   interface{ Read([]byte) (int, error) }
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
