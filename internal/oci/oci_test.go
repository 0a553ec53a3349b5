package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// entry is one tar entry of a test layer.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
	uid, gid         int
}

func layerOf(t *testing.T, entries ...entry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid, Linkname: e.link}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.Typeflag == tar.TypeChar {
			h.Devmajor, h.Devminor = 1, 3
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func imageOf(t *testing.T, cfg v1.Config, arch string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", arch, cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// startRegistry serves an in-process registry on loopback; tamper, when
// set, may rewrite a response body.
func startRegistry(t *testing.T, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(nilLogger()))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func push(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithAuth(authn.Anonymous)); err != nil {
		t.Fatal(err)
	}
}

func opts() Options { return Options{Keychain: authn.NewMultiKeychain()} }

func openApply(t *testing.T, ref string, o Options) (*Image, string, ApplyResult, error) {
	t.Helper()
	src, err := Parse(ref)
	if err != nil {
		t.Fatal(err)
	}
	im, err := Open(context.Background(), src, o)
	if err != nil {
		return nil, "", ApplyResult{}, err
	}
	t.Cleanup(im.Close)
	dest := t.TempDir()
	res, err := im.Apply(context.Background(), dest, nil)
	return im, dest, res, err
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("restoring owners needs root")
	}
}

func TestIsReference(t *testing.T) {
	for s, want := range map[string]bool{
		"debian:12": false, "debian:12-base": false, "python:3.12-slim": false,
		"docker.io/library/python:3.12-slim": true, "library/python": true,
		"localhost:5000/team/img@sha256:0123": true, "oci-archive:/tmp/x.tar": true, "docker-archive:x.tar": true,
	} {
		if got := IsReference(s); got != want {
			t.Errorf("IsReference(%q) = %v, want %v", s, got, want)
		}
	}
	if _, err := Parse("debian:12"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Parse(catalog name) = %v", err)
	}
	for _, bad := range []string{"localhost:5000/UPPER", "../../etc", "localhost:5000/a/../b", "x/./y", "oci-archive:"} {
		if _, err := Parse(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Parse(%q) = %v", bad, err)
		}
	}
}

func TestApplyLayersWhiteoutsLinksOwnersConfig(t *testing.T) {
	needRoot(t)
	reg := startRegistry(t, nil)
	l1 := layerOf(t,
		entry{name: "etc/", typ: tar.TypeDir},
		entry{name: "etc/passwd", body: "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"},
		entry{name: "home/app/", typ: tar.TypeDir, uid: 1000, gid: 1000, mode: 0o750},
		entry{name: "home/app/notes", body: "lower", uid: 1000, gid: 1000},
		entry{name: "a/f1", body: "one"},
		entry{name: "a/f2", body: "two"},
		entry{name: "b/x", body: "x"},
		entry{name: "d/old", body: "old"},
		entry{name: "d/keep/deep", body: "deep"},
		entry{name: "bin/su", body: "#!", mode: 0o4755},
		entry{name: "l", typ: tar.TypeSymlink, link: "a/f1"},
		entry{name: "abs", typ: tar.TypeSymlink, link: "/etc/passwd"},
		entry{name: "h", typ: tar.TypeLink, link: "a/f2"},
		entry{name: "dev/null", typ: tar.TypeChar},
	)
	l2 := layerOf(t,
		entry{name: "a/.wh.f1", body: ""},
		entry{name: ".wh.b", body: ""},
		entry{name: "d/.wh..wh..opq", body: ""},
		entry{name: "d/new", body: "new"},
		entry{name: "d/keep/", typ: tar.TypeDir},
		entry{name: "d/keep/mine", body: "mine"},
		entry{name: "a/f3", typ: tar.TypeLink, link: "a/f2"},
	)
	cfg := v1.Config{Env: []string{"PATH=/opt/bin:/usr/bin", "GREETING=hi"}, WorkingDir: "/home/app", User: "app"}
	push(t, reg+"/team/img:v1", imageOf(t, cfg, "amd64", l1, l2))

	im, dest, res, err := openApply(t, reg+"/team/img:v1", opts())
	if err != nil {
		t.Fatal(err)
	}
	if res.Layers != 2 || im.Digest == "" || im.Config.Config.User != "app" || im.Config.Config.WorkingDir != "/home/app" || len(im.Config.Config.Env) != 2 {
		t.Fatalf("result %+v digest %q config %+v", res, im.Digest, im.Config.Config)
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(dest, p))
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return string(b)
	}
	gone := func(p string) {
		if _, err := os.Lstat(filepath.Join(dest, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s should be whited out: %v", p, err)
		}
	}
	gone("a/f1")
	gone("b")
	gone("d/old")
	gone("d/keep/deep")
	for p, want := range map[string]string{"a/f2": "two", "d/new": "new", "d/keep/mine": "mine", "h": "two", "a/f3": "two", "home/app/notes": "lower"} {
		if got := read(p); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	if l, err := os.Readlink(filepath.Join(dest, "abs")); err != nil || l != "/etc/passwd" {
		t.Errorf("abs -> %q %v", l, err)
	}
	if l, err := os.Readlink(filepath.Join(dest, "l")); err != nil || l != "a/f1" {
		t.Errorf("l -> %q %v", l, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dest, "home/app"), &st); err != nil || st.Uid != 1000 || st.Gid != 1000 || st.Mode&0o777 != 0o750 {
		t.Errorf("home/app owner %d:%d mode %o %v", st.Uid, st.Gid, st.Mode&0o777, err)
	}
	if err := syscall.Stat(filepath.Join(dest, "bin/su"), &st); err != nil || st.Mode&syscall.S_ISUID == 0 {
		t.Errorf("bin/su lost its setuid bit: %o %v", st.Mode, err)
	}
	if _, err := os.Lstat(filepath.Join(dest, "dev/null")); !errors.Is(err, os.ErrNotExist) || res.SkippedCount != 1 {
		t.Errorf("device node: %v, skipped %+v", err, res.Skipped)
	}
}

func TestApplyRefusesHostileLayers(t *testing.T) {
	needRoot(t)
	reg := startRegistry(t, nil)
	base := layerOf(t, entry{name: "etc/passwd", body: "x"}, entry{name: "s", typ: tar.TypeSymlink, link: "etc"})
	for name, l := range map[string]v1.Layer{
		"dotdot-whiteout":   layerOf(t, entry{name: "../.wh.passwd"}),
		"abs-whiteout":      layerOf(t, entry{name: "/.wh.etc"}),
		"symlink-whiteout":  layerOf(t, entry{name: "s/.wh.passwd"}),
		"symlink-opaque":    layerOf(t, entry{name: "s/.wh..wh..opq"}),
		"symlinked-parent":  layerOf(t, entry{name: "s/shadow", body: "x"}),
		"escaping-hardlink": layerOf(t, entry{name: "h", typ: tar.TypeLink, link: "../../etc/passwd"}),
	} {
		t.Run(name, func(t *testing.T) {
			ref := reg + "/hostile/" + name + ":v1"
			push(t, ref, imageOf(t, v1.Config{}, "amd64", base, l))
			_, dest, _, err := openApply(t, ref, opts())
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !errors.Is(err, tarutil.ErrUnsafePath) {
				t.Fatalf("err = %v, want invalid argument + unsafe path", err)
			}
			if got, _ := os.ReadFile(filepath.Join(dest, "etc/passwd")); string(got) != "x" {
				t.Errorf("etc/passwd changed: %q", got)
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	reg := startRegistry(t, nil)
	amd := imageOf(t, v1.Config{}, "amd64", layerOf(t, entry{name: "f", body: "amd"}))
	arm := imageOf(t, v1.Config{}, "arm64", layerOf(t, entry{name: "f", body: "arm"}))
	push(t, reg+"/arm:only", arm)
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}})
	noAMD := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	for ref, ix := range map[string]v1.ImageIndex{reg + "/multi:v1": idx, reg + "/multi:noamd": noAMD} {
		r, _ := name.ParseReference(ref)
		if err := remote.WriteIndex(r, ix); err != nil {
			t.Fatal(err)
		}
	}

	_, dest, _, err := openApply(t, reg+"/multi:v1", opts())
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "f")); string(b) != "amd" && os.Geteuid() == 0 {
		t.Errorf("picked the wrong platform: %q", b)
	}
	for ref, want := range map[string]error{
		reg + "/multi:noamd":    errdefs.ErrInvalidArgument,
		reg + "/arm:only":       errdefs.ErrInvalidArgument,
		reg + "/missing:v1":     errdefs.ErrNotFound,
		unreachable(t) + "/x:1": errdefs.ErrUnavailable,
	} {
		src, _ := Parse(ref)
		_, err := Open(context.Background(), src, opts())
		if !errors.Is(err, want) || errdefs.Hint(err) == "" && want != errdefs.ErrNotFound {
			t.Errorf("Open(%s) = %v, want %v with a hint", ref, err, want)
		}
	}
	o := opts()
	o.MaxBytes = 10
	if _, _, _, err := openApply(t, reg+"/arm:only", o); err == nil {
		t.Error("arm image opened")
	}
}

func unreachable(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestSizeCap(t *testing.T) {
	needRoot(t)
	reg := startRegistry(t, nil)
	big := strings.Repeat("z", 64<<10) // compresses to almost nothing
	push(t, reg+"/big:v1", imageOf(t, v1.Config{}, "amd64", layerOf(t, entry{name: "a", body: big}, entry{name: "b", body: big})))
	o := opts()
	o.MaxBytes = 100 << 10
	_, _, _, err := openApply(t, reg+"/big:v1", o)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "cap") {
		t.Fatalf("err = %v, want the unpacked size cap", err)
	}
}

func TestTamperedLayerRefused(t *testing.T) {
	needRoot(t)
	l := layerOf(t, entry{name: "f", body: strings.Repeat("honest ", 1000)})
	ld, _ := l.Digest()
	rc, _ := l.Compressed()
	forged, _ := io.ReadAll(rc)
	forged[len(forged)/2] ^= 0xff // same size, one byte flipped
	reg := startRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+ld.String()) {
				w.Write(forged)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	push(t, reg+"/tampered:v1", imageOf(t, v1.Config{}, "amd64", l))
	_, _, _, err := openApply(t, reg+"/tampered:v1", opts())
	if !errors.Is(err, ErrDigestMismatch) || !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("err = %v, want a digest mismatch", err)
	}
}

func TestArchives(t *testing.T) {
	needRoot(t)
	img := imageOf(t, v1.Config{User: "1000:1000"}, "amd64",
		layerOf(t, entry{name: "etc/os-release", body: "ID=test\n"}),
		layerOf(t, entry{name: "etc/.wh.os-release"}, entry{name: "etc/hostname", body: "h\n"}))
	dir := t.TempDir()

	docker := filepath.Join(dir, "docker.tar")
	tag, _ := name.NewTag("example.com/test:v1")
	if err := tarball.WriteToFile(docker, tag, img); err != nil {
		t.Fatal(err)
	}
	lp, err := layout.Write(filepath.Join(dir, "layout"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	ociTar := filepath.Join(dir, "oci.tar")
	f, _ := os.Create(ociTar)
	if _, _, err := tarutil.TarDir(f, filepath.Join(dir, "layout")); err != nil {
		t.Fatal(err)
	}
	f.Close()

	for _, ref := range []string{"docker-archive:" + docker, "oci-archive:" + ociTar} {
		im, dest, _, err := openApply(t, ref, opts())
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if _, err := os.Stat(filepath.Join(dest, "etc/os-release")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: whiteout not applied: %v", ref, err)
		}
		if b, _ := os.ReadFile(filepath.Join(dest, "etc/hostname")); string(b) != "h\n" || im.Config.Config.User != "1000:1000" {
			t.Errorf("%s: hostname %q config %+v", ref, b, im.Config.Config)
		}
	}
	if _, err := Open(context.Background(), Source{Kind: KindDockerArchive, Path: filepath.Join(dir, "none.tar")}, opts()); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("missing archive: %v", err)
	}

}

func nilLogger() *log.Logger { return log.New(io.Discard, "", 0) }
