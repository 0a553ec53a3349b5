package agentapi

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// A manifest reply within MaxManifestBytes but of more entries than any
// agent lists ("null," is five bytes and decodes into an 80-byte entry)
// is refused before the entries are built, by each call that takes one:
// the old code built them all (~340 MiB of heap here, 12 GiB for a reply
// of MaxManifestBytes), in the MCP server that serves every workspace.
func TestManifestEntriesBounded(t *testing.T) {
	flood := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"entries":[`)
		_, _ = io.Copy(w, &repeatReader{b: []byte(`null,`), n: 5 * (MaxManifestEntries + 16)})
		_, _ = io.WriteString(w, `null]}`)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathLayerManifest, flood)
	mux.HandleFunc("POST "+PathLayerFreeze, flood)
	mux.HandleFunc("POST "+PathLayerRelease, flood)
	c, _ := fakeAgent(t, mux)
	calls := map[string]func() error{
		"manifest": func() error { _, err := c.LayerManifest(ctx(t)); return err },
		"freeze":   func() error { _, _, err := c.FreezeLayerManifest(ctx(t), time.Second); return err },
		"release":  func() error { _, _, err := c.ReleaseWorkspaceListed(ctx(t), time.Second); return err },
	}
	for name, call := range calls {
		var err error
		alloc := allocatedBy(func() { err = call() })
		if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "more than") {
			t.Fatalf("%s: %v", name, err)
		}
		// The reply's own bytes (~20 MiB, read whole, then copied by the
		// decoder's scan) and the fake agent's writes; not the entries.
		if alloc > 160<<20 {
			t.Fatalf("%s: host allocated %d MiB for a refused manifest", name, alloc>>20)
		}
	}
}

// The count is never below what the decode builds, whatever the strings
// and nesting, and an honest listing passes.
func TestArrayValues(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{`{"entries":[]}`, 1},
		{`{"entries":[{"p":"a,b","k":"file"},{"p":"[\"],","k":"dir"}]}`, 2},
		{`{"x":[1,2],"entries":[null,null,null]}`, 5},
		{`{"entries":[{"p":"a","s":[1,2,3]}]}`, 1},
		{`{"entries":null}`, 0},
	} {
		if got := arrayValues([]byte(tc.in), 100); got != tc.want {
			t.Errorf("arrayValues(%s) = %d, want %d", tc.in, got, tc.want)
		}
	}
	m := LayerManifest{Entries: []LayerEntry{{Path: "a", Kind: "file"}, {Path: `"q",[x]`, Kind: "dir"}}}
	b, _ := json.Marshal(m)
	var got LayerManifest
	if err := json.Unmarshal(b, &got); err != nil || len(got.Entries) != 2 || got.Entries[1].Path != `"q",[x]` {
		t.Fatalf("round trip: %+v %v", got, err)
	}
}

// A file listing reply within MaxListReplyBytes but of far more entries
// than the agent sends (at most MaxListEntries) is refused before the
// entries are built: the old code built ~1.7 M of them per call.
func TestFileListEntriesBounded(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathFilesList, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"path":"/workspace","entries":[`)
		_, _ = io.Copy(w, &repeatReader{b: []byte(`null,`), n: (MaxListReplyBytes - 64) / 5 * 5})
		_, _ = io.WriteString(w, `null]}`)
	})
	c, _ := fakeAgent(t, mux)
	var err error
	alloc := allocatedBy(func() { _, err = c.ListFiles(ctx(t), "/workspace", "/workspace", true) })
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("list: %v", err)
	}
	if alloc > 64<<20 {
		t.Fatalf("host allocated %d MiB for a refused listing", alloc>>20)
	}
	// An honest listing of MaxListEntries decodes.
	l := FileList{Path: "/workspace"}
	for i := 0; i < MaxListEntries; i++ {
		l.Entries = append(l.Entries, FileEntry{Path: "/workspace/f", Type: FileTypeFile})
	}
	b, _ := json.Marshal(l)
	var got FileList
	if err := json.Unmarshal(b, &got); err != nil || len(got.Entries) != MaxListEntries {
		t.Fatalf("honest listing: %d entries, %v", len(got.Entries), err)
	}
}

// A write result naming more files than a write may (MaxWriteFiles) is
// refused before its entries are built; an honest one of MaxWriteFiles
// decodes.
func TestWriteResultEntriesBounded(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathFilesWrite, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"files":[`)
		_, _ = io.Copy(w, &repeatReader{b: []byte(`null,`), n: (MaxReplyBytes - 64) / 5 * 5})
		_, _ = io.WriteString(w, `null]}`)
	})
	c, _ := fakeAgent(t, mux)
	_, err := c.WriteFiles(ctx(t), FileWriteRequest{})
	if err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("write: %v", err)
	}
	var honest FileWriteResult
	for i := 0; i < MaxWriteFiles; i++ {
		honest.Files = append(honest.Files, FileWritten{})
	}
	b, _ := json.Marshal(honest)
	var got FileWriteResult
	if err := json.Unmarshal(b, &got); err != nil || len(got.Files) != MaxWriteFiles {
		t.Fatalf("honest result: %d files, %v", len(got.Files), err)
	}
}
