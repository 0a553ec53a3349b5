package envstore

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/oci"
)

func testImage(t *testing.T, files map[string]string, cfg v1.Config) v1.Image {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for n, body := range files {
		tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
		tw.Write([]byte(body))
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, _ := mutate.AppendLayers(empty.Image, l)
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", "amd64", cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// imageStore is a store whose image kernel is a fake cached kernel.
func imageStore(t *testing.T) *Store {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("converting images needs root")
	}
	if _, err := lookTool("mke2fs"); err != nil {
		t.Skip("no mke2fs")
	}
	s := New(filepath.Join(t.TempDir(), "envs"), t.TempDir(), WithLogger(testLogger(t)))
	kdir := t.TempDir()
	os.WriteFile(filepath.Join(kdir, KernelFile), []byte("\x7fELF fake"), 0o644)
	os.MkdirAll(filepath.Join(kdir, ModulesDir), 0o755)
	os.WriteFile(filepath.Join(kdir, "modules/virtio.ko"), []byte("mod"), 0o644)
	s.kernelForImage = func(context.Context, func(Event)) (string, kernelCache, error) {
		return kdir, kernelCache{Kernel: KernelInfo{Package: "fake", Version: "1"}, Modules: []string{"modules/virtio.ko"}}, nil
	}
	return s
}

func serveRegistry(t *testing.T, wrap func(http.Handler) http.Handler) string {
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func pushTo(t *testing.T, ref string, img v1.Image) {
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
}

func noKeys() ImagePullOptions {
	return ImagePullOptions{OCI: oci.Options{Keychain: authn.NewMultiKeychain()}}
}

func TestPullImageInstallsGetsListsPrunes(t *testing.T) {
	s := imageStore(t)
	reg := serveRegistry(t, nil)
	ref := reg + "/team/app:v1"
	cfg := v1.Config{Env: []string{"PATH=/usr/bin:/bin", "X=1"}, WorkingDir: "/srv", User: "1000"}
	pushTo(t, ref, testImage(t, map[string]string{"srv/app.txt": "hello", "etc/resolv.conf": "nameserver 8.8.8.8\n"}, cfg))

	if _, err := s.GetImage(ref, ""); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("GetImage before pull: %v", err)
	}
	res, err := s.PullImage(context.Background(), ref, noKeys())
	if err != nil {
		t.Fatal(err)
	}
	m := res.Installed.Manifest
	if res.AlreadyInstalled || m.Image == nil || m.Image.User != "1000" || m.Image.WorkingDir != "/srv" || m.Source != "oci" {
		t.Fatalf("pull result %+v image %+v", res, m.Image)
	}
	inst, err := s.GetImage(ref, "")
	if err != nil || inst.Dir != res.Installed.Dir || inst.RootfsPath() == "" {
		t.Fatalf("GetImage: %+v %v", inst, err)
	}
	// The image config reached the root filesystem for the agent.
	out, err := runTool(context.Background(), command{name: "debugfs", args: []string{"-R", "cat " + agentapi.ImageConfigPath, inst.RootfsPath()}})
	if err == nil {
		var ic agentapi.ImageConfig
		if jerr := json.Unmarshal(out, &ic); jerr != nil || ic.User != "1000" || ic.WorkingDir != "/srv" || ic.Digest != m.Image.Digest {
			t.Errorf("image config in rootfs: %q %v", out, jerr)
		}
	}
	again, err := s.PullImage(context.Background(), ref, noKeys())
	if err != nil || !again.AlreadyInstalled {
		t.Fatalf("second pull: %+v %v", again, err)
	}
	byDigest, err := s.GetImage(reg+"/team/app@"+m.Image.Digest, "")
	if err != nil || byDigest.Dir != inst.Dir {
		t.Fatalf("by digest: %v", err)
	}
	list, err := s.ListImages()
	if err != nil || len(list) != 1 || list[0].Digest != m.Image.Digest || list[0].References[0] != ref {
		t.Fatalf("ListImages: %+v %v", list, err)
	}
	// The catalog prune leaves images alone.
	if _, err := s.Prune(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetImage(ref, ""); err != nil {
		t.Fatalf("catalog prune removed an image: %v", err)
	}
	pr, err := s.PruneImages(context.Background(), func(string) bool { return true })
	if err != nil || len(pr.Removed) != 0 {
		t.Fatalf("prune of a used image: %+v %v", pr, err)
	}
	pr, err = s.PruneImages(context.Background(), func(string) bool { return false })
	if err != nil || len(pr.Removed) != 1 {
		t.Fatalf("prune of an unused image: %+v %v", pr, err)
	}
	if _, err := s.GetImage(ref, ""); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("GetImage after prune: %v", err)
	}
}

func TestPullImageFailureLeavesNothing(t *testing.T) {
	s := imageStore(t)
	img := testImage(t, map[string]string{"f": strings.Repeat("data ", 2000)}, v1.Config{})
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	rc, _ := layers[0].Compressed()
	forged, _ := io.ReadAll(rc)
	forged[len(forged)/2] ^= 0xff
	reg := serveRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+ld.String()) {
				w.Write(forged)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	pushTo(t, reg+"/bad:v1", img)
	_, err := s.PullImage(context.Background(), reg+"/bad:v1", noKeys())
	if !errors.Is(err, oci.ErrDigestMismatch) {
		t.Fatalf("err = %v, want digest mismatch", err)
	}
	t.Setenv("PYRO_MAX_IMAGE_BYTES", "100")
	big := testImage(t, map[string]string{"f": strings.Repeat("x", 4096)}, v1.Config{})
	pushTo(t, reg+"/big:v1", big)
	if _, err := s.PullImage(context.Background(), reg+"/big:v1", noKeys()); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("over the cap: %v", err)
	}
	ents, _ := os.ReadDir(s.root)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			t.Errorf("partial build left: %s", e.Name())
		}
	}
	if list, _ := s.ListImages(); len(list) != 0 {
		t.Errorf("cache entry after failures: %+v", list)
	}
}

// TestPullImageStagingPrivate plays another local user during a
// conversion: while the staging tree holds the image's files (setuid bits
// and owners kept), its build directory admits nobody but pyro's user.
func TestPullImageStagingPrivate(t *testing.T) {
	s := imageStore(t)
	reg := serveRegistry(t, nil)
	ref := reg + "/team/private:v1"
	pushTo(t, ref, testImage(t, map[string]string{"srv/app.txt": "hello"}, v1.Config{}))
	checked := 0
	opts := noKeys()
	opts.Progress = func(ev Event) {
		if ev.Phase == "install" {
			return
		}
		dirs, _ := filepath.Glob(filepath.Join(s.root, tmpPrefix+"*"))
		for _, d := range dirs {
			st, err := os.Stat(d)
			if err != nil {
				continue
			}
			checked++
			if st.Mode().Perm()&0o077 != 0 {
				t.Errorf("phase %s: build directory %s has mode %v", ev.Phase, d, st.Mode().Perm())
			}
		}
	}
	if _, err := s.PullImage(context.Background(), ref, opts); err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Fatal("no build directory seen during the conversion")
	}
}
