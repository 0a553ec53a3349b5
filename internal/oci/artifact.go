package oci

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// A pyro environment as an OCI artifact: an image manifest whose config
// blob is the environment's manifest.json and whose layers are its files
// (vmlinux, rootfs.ext4, modules/*.ko), each gzip-compressed and titled
// with its path. Nothing in it is a container image: registries store it,
// container runtimes refuse it by its artifact type.
const (
	ArtifactType      = "application/vnd.pyro.environment.v1"
	ConfigMediaType   = types.MediaType("application/vnd.pyro.environment.manifest.v1+json")
	FileMediaType     = types.MediaType("application/vnd.pyro.environment.file.v1.tar+gzip")
	titleAnnotation   = "org.opencontainers.image.title"
	maxArtifactConfig = 1 << 20
)

// fileLayer is a gzip-compressed file on disk as a v1.Layer.
type fileLayer struct {
	path   string
	digest v1.Hash
	diffID v1.Hash
	size   int64
}

func (l *fileLayer) Digest() (v1.Hash, error)             { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)             { return l.diffID, nil }
func (l *fileLayer) Size() (int64, error)                 { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error)  { return FileMediaType, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)   { return os.Open(l.path) }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) { return nil, errors.New("not used") }

// compressFile gzips src into dst and returns its layer.
func compressFile(src, dst string) (*fileLayer, error) {
	in, err := os.Open(src)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	ch, dh := sha256.New(), sha256.New()
	cw := io.MultiWriter(out, ch)
	cnt := &countWriter{w: cw}
	zw, err := gzip.NewWriterLevel(cnt, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(io.MultiWriter(zw, dh), in); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	if err := out.Close(); err != nil {
		return nil, err
	}
	return &fileLayer{path: dst, size: cnt.n,
		digest: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", ch.Sum(nil))},
		diffID: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", dh.Sum(nil))}}, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// rawManifest is a pushed manifest as remote.Put wants it.
type rawManifest struct {
	b  []byte
	mt types.MediaType
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.b, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return r.mt, nil }

// PushEnvironment publishes the environment in dir (manifest.json plus
// files, relative paths) to ref and returns the artifact's manifest digest.
// tmp holds the compressed files while they upload.
func PushEnvironment(ctx context.Context, ref string, dir string, files []string, tmp string, opts Options, progress func(msg string, done, total int64)) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", errdefs.Wrap(errdefs.ErrInvalidArgument, err, "references look like localhost:5000/pyro/debian:12", "invalid reference %q", ref)
	}
	src := Source{Kind: KindRegistry, Ref: r}
	cfg, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return "", err
	}
	work, err := os.MkdirTemp(tmp, "push-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	ropts := opts.remote(ctx)
	m := v1.Manifest{
		SchemaVersion: 2, MediaType: types.OCIManifestSchema1,
		Config: v1.Descriptor{MediaType: ConfigMediaType, Size: int64(len(cfg)), Digest: sha256Hash(cfg)},
	}
	cfgLayer := &memLayer{b: cfg, mt: ConfigMediaType}
	if err := remote.WriteLayer(r.Context(), cfgLayer, ropts...); err != nil {
		return "", classify(src, err, "push config to")
	}
	for i, rel := range files {
		if progress != nil {
			progress(fmt.Sprintf("compressing %s (%d/%d)", rel, i+1, len(files)), 0, 0)
		}
		l, err := compressFile(filepath.Join(dir, filepath.FromSlash(rel)), filepath.Join(work, fmt.Sprintf("f%d.gz", i)))
		if err != nil {
			return "", fmt.Errorf("compress %s: %w", rel, err)
		}
		if progress != nil {
			progress(fmt.Sprintf("uploading %s (%d MiB)", rel, l.size>>20), 0, 0)
		}
		if err := remote.WriteLayer(r.Context(), l, ropts...); err != nil {
			return "", classify(src, err, "push "+rel+" to")
		}
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: FileMediaType, Size: l.size, Digest: l.digest,
			Annotations: map[string]string{titleAnnotation: rel}})
		_ = os.Remove(l.path)
	}
	b, err := json.Marshal(struct {
		v1.Manifest
		ArtifactType string `json:"artifactType"`
	}{m, ArtifactType})
	if err != nil {
		return "", err
	}
	if err := remote.Put(r, rawManifest{b, types.OCIManifestSchema1}, ropts...); err != nil {
		return "", classify(src, err, "push manifest to")
	}
	return sha256Hash(b).String(), nil
}

func sha256Hash(b []byte) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sha256.Sum256(b))}
}

type memLayer struct {
	b  []byte
	mt types.MediaType
}

func (l *memLayer) Digest() (v1.Hash, error)            { return sha256Hash(l.b), nil }
func (l *memLayer) DiffID() (v1.Hash, error)            { return sha256Hash(l.b), nil }
func (l *memLayer) Size() (int64, error)                { return int64(len(l.b)), nil }
func (l *memLayer) MediaType() (types.MediaType, error) { return l.mt, nil }
func (l *memLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.b)), nil
}
func (l *memLayer) Uncompressed() (io.ReadCloser, error) { return l.Compressed() }

// PulledEnvironment is what PullEnvironment fetched.
type PulledEnvironment struct {
	Digest   string // artifact manifest digest
	Manifest []byte // the environment's manifest.json, as pushed
	Files    []string
}

// PullEnvironment fetches the environment artifact at ref into dir: the
// pushed manifest.json is returned (not written), every file is
// decompressed into dir under its title, each blob checked against its
// digest. The caller verifies the files against the manifest. maxBytes
// bounds each file's decompressed size.
func PullEnvironment(ctx context.Context, ref, dir string, opts Options, progress func(msg string, done, total int64)) (PulledEnvironment, error) {
	var out PulledEnvironment
	r, err := name.ParseReference(ref)
	if err != nil {
		return out, errdefs.Wrap(errdefs.ErrInvalidArgument, err, "", "invalid reference %q", ref)
	}
	src := Source{Kind: KindRegistry, Ref: r}
	ropts := opts.remote(ctx)
	desc, err := remote.Get(r, ropts...)
	if err != nil {
		return out, classify(src, err, "resolve")
	}
	out.Digest = desc.Digest.String()
	var m struct {
		v1.Manifest
		ArtifactType string `json:"artifactType"`
	}
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		return out, errdefs.Wrap(errdefs.ErrInvalidArgument, err, "", "artifact %s: bad manifest", src)
	}
	if m.Config.MediaType != ConfigMediaType {
		return out, errdefs.New(errdefs.ErrInvalidArgument, "push it with `pyro env push`", "%s is not a pyro environment (config type %q)", src, m.Config.MediaType)
	}
	if m.Config.Size > maxArtifactConfig {
		return out, errdefs.New(errdefs.ErrInvalidArgument, "", "artifact %s: manifest too large", src)
	}
	cfgRC, err := remote.Layer(r.Context().Digest(m.Config.Digest.String()), ropts...)
	if err != nil {
		return out, classify(src, err, "fetch manifest of")
	}
	rc, err := cfgRC.Compressed()
	if err != nil {
		return out, classify(src, err, "fetch manifest of")
	}
	cfg, err := io.ReadAll(io.LimitReader(rc, maxArtifactConfig+1))
	rc.Close()
	if err != nil {
		return out, classify(src, err, "fetch manifest of")
	}
	if sha256Hash(cfg) != m.Config.Digest {
		return out, mismatch(fmt.Sprintf("artifact %s manifest", src), sha256Hash(cfg).String(), m.Config.Digest.String())
	}
	out.Manifest = cfg
	var total, done int64
	for _, l := range m.Layers {
		total += l.Size
	}
	max := opts.maxBytes()
	for _, l := range m.Layers {
		rel := l.Annotations[titleAnnotation]
		if rel == "" || !filepath.IsLocal(rel) || path.Clean(rel) != rel || rel == "manifest.json" {
			return out, errdefs.New(errdefs.ErrInvalidArgument, "", "artifact %s: unsafe file name %q", src, rel)
		}
		if l.MediaType != FileMediaType {
			return out, errdefs.New(errdefs.ErrInvalidArgument, "", "artifact %s: file %s has media type %q", src, rel, l.MediaType)
		}
		layer, err := remote.Layer(r.Context().Digest(l.Digest.String()), ropts...)
		if err != nil {
			return out, classify(src, err, "fetch "+rel+" of")
		}
		n, err := fetchFile(ctx, src, layer, l, filepath.Join(dir, filepath.FromSlash(rel)), max, func(d int64) {
			if progress != nil {
				progress(rel, done+d, total)
			}
		})
		done += n
		if err != nil {
			return out, err
		}
		out.Files = append(out.Files, rel)
	}
	return out, nil
}

func fetchFile(ctx context.Context, src Source, layer v1.Layer, desc v1.Descriptor, dst string, max int64, progress func(int64)) (int64, error) {
	label := fmt.Sprintf("artifact %s file %s", src, desc.Annotations[titleAnnotation])
	rc, err := layer.Compressed()
	if err != nil {
		return 0, classify(src, err, "fetch")
	}
	defer rc.Close()
	blob := &hashCounter{r: ctxReader{ctx, rc}, h: sha256.New(), progress: progress}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return 0, err
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(io.LimitReader(blob, desc.Size+1))
	var n int64
	if err == nil {
		n, err = io.Copy(f, io.LimitReader(zr, max+1))
		if err == nil && n > max {
			return blob.n, errdefs.New(errdefs.ErrInvalidArgument, "raise $PYRO_MAX_IMAGE_BYTES to allow it", "%s is over the %d MiB cap", label, max>>20)
		}
		if err == nil {
			_, err = io.Copy(io.Discard, blob)
		}
	}
	if blob.n >= desc.Size && blob.sum() != desc.Digest.String() {
		return blob.n, mismatch(label, blob.sum(), desc.Digest.String())
	}
	if err != nil {
		if blob.readErr != nil || ctx.Err() != nil {
			return blob.n, classify(src, err, "fetch")
		}
		return blob.n, errdefs.Wrap(errdefs.ErrInvalidArgument, err, "", "%s", label)
	}
	return blob.n, f.Close()
}
