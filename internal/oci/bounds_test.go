package oci

import (
	"archive/tar"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// manyEntries is a layer of n empty entries of one type: a few KiB
// compressed, n inodes unpacked.
func manyEntries(t *testing.T, prefix string, typ byte, n int) v1.Layer {
	t.Helper()
	es := make([]entry, n)
	for i := range es {
		es[i] = entry{name: fmt.Sprintf("%s%d", prefix, i), typ: typ}
	}
	return layerOf(t, es...)
}

// TestEntryCap plays an image of many tiny entries, which the byte cap
// never sees: empty directories, empty files, "." entries (which skip
// the layer filter) and a count split across layers are all refused
// past MaxEntries, with the cap's hint.
func TestEntryCap(t *testing.T) {
	needRoot(t)
	reg := startRegistry(t, nil)
	dots := make([]entry, 300)
	for i := range dots {
		dots[i] = entry{name: "./", typ: tar.TypeDir}
	}
	for name, layers := range map[string][]v1.Layer{
		"dirs":  {manyEntries(t, "d", tar.TypeDir, 300)},
		"files": {manyEntries(t, "f", tar.TypeReg, 300)},
		"dots":  {layerOf(t, dots...)},
		"split": {manyEntries(t, "a", tar.TypeDir, 150), manyEntries(t, "b", tar.TypeDir, 150)},
		"exact": {manyEntries(t, "a", tar.TypeDir, 200), manyEntries(t, "b", tar.TypeDir, 1)},
	} {
		t.Run(name, func(t *testing.T) {
			ref := reg + "/many/" + name + ":v1"
			push(t, ref, imageOf(t, v1.Config{}, "amd64", layers...))
			o := opts()
			o.MaxEntries = 200
			_, _, res, err := openApply(t, ref, o)
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !errors.Is(err, tarutil.ErrTooManyEntries) ||
				!strings.Contains(errdefs.Hint(err), "PYRO_MAX_IMAGE_ENTRIES") {
				t.Fatalf("err = %v (hint %q), want the entry cap", err, errdefs.Hint(err))
			}
			if res.Entries > 201 {
				t.Errorf("read %d entries past a cap of 200", res.Entries)
			}
		})
	}
	ref := reg + "/many/ok:v1"
	push(t, ref, imageOf(t, v1.Config{}, "amd64", manyEntries(t, "a", tar.TypeDir, 100), manyEntries(t, "b", tar.TypeDir, 100)))
	o := opts()
	o.MaxEntries = 200
	if _, _, res, err := openApply(t, ref, o); err != nil || res.Entries != 200 {
		t.Fatalf("200 entries under a cap of 200: %+v, %v", res, err)
	}
}

// TestApplyTimeBound plays a registry that sends a layer's first bytes
// and then stalls: Apply gives up after MaxDuration with an unavailable
// error that says why, instead of waiting forever.
func TestApplyTimeBound(t *testing.T) {
	needRoot(t)
	l := layerOf(t, entry{name: "f", body: strings.Repeat("slow ", 10000)})
	ld, _ := l.Digest()
	rc, _ := l.Compressed()
	blob := make([]byte, 100)
	if _, err := rc.Read(blob); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	reg := startRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+ld.String()) {
				w.Write(blob)
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
				case <-time.After(20 * time.Second):
				}
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	push(t, reg+"/stall:v1", imageOf(t, v1.Config{}, "amd64", l))
	o := opts()
	o.MaxDuration = 500 * time.Millisecond
	start := time.Now()
	_, _, _, err := openApply(t, reg+"/stall:v1", o)
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Apply took %s with a 500ms bound", took)
	}
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "longer than 500ms") ||
		!strings.Contains(errdefs.Hint(err), "PYRO_MAX_IMAGE_SECONDS") {
		t.Fatalf("err = %v (hint %q), want the time bound", err, errdefs.Hint(err))
	}
}
