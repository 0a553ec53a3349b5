package envstore

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/oci"
)

func TestPushThenPullFromRegistry(t *testing.T) {
	var mu sync.Mutex
	tamper := false
	reg := serveRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			on := tamper
			mu.Unlock()
			if on && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
				rec := &captureWriter{header: http.Header{}}
				h.ServeHTTP(rec, r)
				b := rec.body
				if len(b) > 1000 { // a file, not the manifest.json config
					b[len(b)/2] ^= 0xff
				}
				for k, v := range rec.header {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.code)
				w.Write(b)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	o := oci.Options{Keychain: authn.NewMultiKeychain()}
	src, _ := newTestStore(t)
	built, err := src.Pull(context.Background(), testEnv, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Push(context.Background(), "docker.io/library/x:1", reg+"/x", o, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("push of an image ref: %v", err)
	}
	ref := reg + "/pyro/" + testEnv
	pr, err := src.Push(context.Background(), testEnv, ref, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pr.EnvironmentDigest != built.Installed.Manifest.Digest || !strings.HasPrefix(pr.Digest, "sha256:") {
		t.Fatalf("push result %+v", pr)
	}

	dst, fb := newTestStore(t)
	var notes []string
	res, err := dst.Pull(context.Background(), testEnv, PullOptions{Registry: reg + "/pyro", OCI: o, Progress: func(e Event) {
		if e.Phase == "note" {
			notes = append(notes, e.Message)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	m := res.Installed.Manifest
	if fb.calls.Load() != 0 || m.Digest != built.Installed.Manifest.Digest || !strings.HasPrefix(m.Source, "registry ") || len(notes) != 0 {
		t.Fatalf("pull from registry: built %d times, digest %s want %s, source %q, notes %q", fb.calls.Load(), m.Digest, built.Installed.Manifest.Digest, m.Source, notes)
	}
	if _, err := dst.Get(testEnv); err != nil {
		t.Fatal(err)
	}

	// A tampered file is refused; the pull falls back to building locally.
	mu.Lock()
	tamper = true
	mu.Unlock()
	dst2, fb2 := newTestStore(t)
	notes = nil
	res, err = dst2.Pull(context.Background(), testEnv, PullOptions{Registry: reg + "/pyro", OCI: o, Progress: func(e Event) {
		if e.Phase == "note" {
			notes = append(notes, e.Message)
		}
	}})
	if err != nil || fb2.calls.Load() != 1 || res.Installed.Manifest.Source != "local-build" || len(notes) != 1 || !strings.Contains(notes[0], "sha256") {
		t.Fatalf("tampered: err %v, builds %d, source %q, notes %q", err, fb2.calls.Load(), res.Installed.Manifest.Source, notes)
	}

	// An unreachable registry is a note too.
	dst3, fb3 := newTestStore(t)
	notes = nil
	if _, err := dst3.Pull(context.Background(), testEnv, PullOptions{Registry: "127.0.0.1:1/pyro", OCI: o, Progress: func(e Event) {
		if e.Phase == "note" {
			notes = append(notes, e.Message)
		}
	}}); err != nil || fb3.calls.Load() != 1 || len(notes) != 1 {
		t.Fatalf("unreachable: %v, builds %d, notes %q", err, fb3.calls.Load(), notes)
	}
}

type captureWriter struct {
	header http.Header
	code   int
	body   []byte
}

func (c *captureWriter) Header() http.Header  { return c.header }
func (c *captureWriter) WriteHeader(code int) { c.code = code }
func (c *captureWriter) Write(b []byte) (int, error) {
	if c.code == 0 {
		c.code = 200
	}
	c.body = append(c.body, b...)
	return len(b), nil
}

var _ io.Writer = (*captureWriter)(nil)
