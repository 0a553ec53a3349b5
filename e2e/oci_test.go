package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// ociRegistry serves an in-process registry on loopback. While *tamper is
// set, every blob of more than 64 KiB (layers and files, not configs) is
// served with one byte flipped.
func ociRegistry(t *testing.T, tamper *atomic.Bool) string {
	t.Helper()
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tamper.Load() && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			b := rec.Body.Bytes()
			if len(b) > 64<<10 {
				b[len(b)/2] ^= 0xff
			}
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(b)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.Replace(srv.URL, "http://127.0.0.1", "localhost", 1)
}

// rootfsLayer is the cached debian:12-base root filesystem as one
// uncompressed layer (read with debugfs: no mount).
func rootfsLayer(t *testing.T, rootfs string) v1.Layer {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	os.Mkdir(dir, 0o755)
	if out, err := exec.Command("debugfs", "-R", "rdump / "+dir, rootfs).CombinedOutput(); err != nil {
		t.Fatalf("debugfs rdump: %v\n%s", err, out)
	}
	var buf bytes.Buffer
	if _, _, err := tarutil.TarDir(&buf, dir); err != nil {
		t.Fatal(err)
	}
	return static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer)
}

func userLayer(t *testing.T, rootfs string) v1.Layer {
	t.Helper()
	passwd, _ := exec.Command("debugfs", "-R", "cat /etc/passwd", rootfs).Output()
	group, _ := exec.Command("debugfs", "-R", "cat /etc/group", rootfs).Output()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body string) {
		h.Size = int64(len(body))
		if h.Typeflag == tar.TypeDir {
			h.Size = 0
		}
		tw.WriteHeader(h)
		tw.Write([]byte(body))
	}
	add(&tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}, string(passwd)+"app:x:1000:1000::/home/app:/bin/sh\n")
	add(&tar.Header{Name: "etc/group", Typeflag: tar.TypeReg, Mode: 0o644}, string(group)+"app:x:1000:\n")
	add(&tar.Header{Name: "home/app/", Typeflag: tar.TypeDir, Mode: 0o755, Uid: 1000, Gid: 1000}, "")
	add(&tar.Header{Name: "home/app/hello.txt", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 1000, Gid: 1000}, "from the image\n")
	add(&tar.Header{Name: "etc/.wh.motd", Typeflag: tar.TypeReg, Mode: 0o644}, "")
	tw.Close()
	return static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer)
}

func TestOCIImageRunPushPull(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	if _, err := exec.LookPath("debugfs"); err != nil {
		t.Skip("needs debugfs to read the cached root filesystem")
	}
	rootfs := filepath.Join(stateDir(), "environments", strings.Replace(baseEnv, ":", "_", 1), "1.0.0", "rootfs.ext4")
	if _, err := os.Stat(rootfs); err != nil {
		t.Skipf("no cached %s rootfs: %v", baseEnv, err)
	}
	var tamper atomic.Bool
	reg := ociRegistry(t, &tamper)

	layers := []v1.Layer{rootfsLayer(t, rootfs), userLayer(t, rootfs)}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{User: "app", WorkingDir: "/home/app", Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello-from-config"}}
	img, _ = mutate.ConfigFile(img, cf)
	imgRef := reg + "/e2e/app:v1"
	r, _ := name.ParseReference(imgRef)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	digest, _ := img.Digest()

	// A fresh store (kernel cache shared): the image is pulled and
	// converted by `pyro run`, then runs as its user in its WORKDIR.
	home := t.TempDir()
	os.Symlink(filepath.Join(stateDir(), "cache"), filepath.Join(home, "cache"))
	env := []string{"PYRO_HOME=" + home}
	m, res := runJSON(t, env, imgRef, "--", "sh -c 'id -un; pwd; echo $GREETING; cat hello.txt; test -e /etc/motd || echo no-motd'")
	want := "app\n/home/app\nhello-from-config\nfrom the image\nno-motd\n"
	if res.code != 0 || m["stdout"] != want {
		t.Fatalf("run: exit %d stdout %q want %q\nstderr %s", res.code, m["stdout"], want, res.stderr)
	}
	if m["environment"] != imgRef || m["environment_digest"] != digest.String() {
		t.Errorf("result names %v %v, want %s %s", m["environment"], m["environment_digest"], imgRef, digest)
	}
	// An image whose User its /etc/passwd does not list runs nothing (it
	// used to run everything as root), and says why.
	ghost, _ := mutate.ConfigFile(img, func() *v1.ConfigFile {
		c := cf.DeepCopy()
		c.Config.User = "ghost"
		return c
	}())
	ghostRef := reg + "/e2e/ghost:v1"
	gr, _ := name.ParseReference(ghostRef)
	if err := remote.Write(gr, ghost); err != nil {
		t.Fatal(err)
	}
	g := pyro(t, env, "run", ghostRef, "--", "id -u")
	if g.code != 126 || strings.TrimSpace(g.stdout) == "0" || !strings.Contains(g.stderr, `"ghost"`) || !strings.Contains(g.stderr, "as root") {
		t.Fatalf("run as an unresolvable user: exit %d stdout %q stderr %s", g.code, g.stdout, g.stderr)
	}

	l := pyro(t, env, "env", "list", "--json")
	if !strings.Contains(l.stdout, digest.String()) || !strings.Contains(l.stdout, `"kind": "image"`) || !strings.Contains(l.stdout, imgRef) {
		t.Errorf("env list lacks the image: %s", l.stdout)
	}

	// push, then pull into another fresh store from the registry: the same
	// environment digest, and no local build.
	p := pyro(t, nil, "env", "push", "--json", baseEnv, reg+"/pyro/"+baseEnv)
	var pushed struct {
		EnvironmentDigest string `json:"environment_digest"`
	}
	if p.code != 0 || json.Unmarshal([]byte(p.stdout), &pushed) != nil {
		t.Fatalf("push: exit %d %s %s", p.code, p.stdout, p.stderr)
	}
	home2 := t.TempDir()
	os.Symlink(filepath.Join(stateDir(), "cache"), filepath.Join(home2, "cache"))
	env2 := []string{"PYRO_HOME=" + home2, "PYRO_DEBIAN_MIRROR=http://127.0.0.1:1/none"}
	pl := pyro(t, env2, "env", "pull", "--json", "--registry", reg+"/pyro", baseEnv)
	var pulled struct {
		Environment struct {
			Manifest struct {
				Digest string `json:"digest"`
				Source string `json:"source"`
			} `json:"manifest"`
		} `json:"environment"`
	}
	if pl.code != 0 || json.Unmarshal([]byte(pl.stdout), &pulled) != nil {
		t.Fatalf("pull: exit %d %s %s", pl.code, pl.stdout, pl.stderr)
	}
	if pulled.Environment.Manifest.Digest != pushed.EnvironmentDigest || !strings.HasPrefix(pulled.Environment.Manifest.Source, "registry ") {
		t.Fatalf("round trip: pulled %+v, pushed %s", pulled.Environment.Manifest, pushed.EnvironmentDigest)
	}

	// A tampered layer is refused, and nothing is cached.
	tamper.Store(true)
	home3 := t.TempDir()
	os.Symlink(filepath.Join(stateDir(), "cache"), filepath.Join(home3, "cache"))
	bad := pyro(t, []string{"PYRO_HOME=" + home3}, "env", "pull", imgRef)
	if bad.code != 2 || !strings.Contains(bad.stderr, "sha256") {
		t.Fatalf("tampered pull: exit %d stderr %s", bad.code, bad.stderr)
	}
	if ents, _ := os.ReadDir(filepath.Join(home3, "environments", "images")); len(ents) > 0 {
		t.Errorf("tampered image left entries: %v", ents)
	}
}
