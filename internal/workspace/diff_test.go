package workspace

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/redact"
	"github.com/pyro-mcp/pyro/internal/tarutil"
)

func tarOf(t *testing.T, files map[string]string) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for name, body := range files {
		if strings.HasSuffix(name, "/") {
			tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755})
			continue
		}
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
		tw.Write([]byte(body))
	}
	tw.Close()
	return &b
}

func TestDiff(t *testing.T) {
	base := tarOf(t, map[string]string{"same.txt": "x\n", "edit.txt": "one\ntwo\n", "gone.txt": "bye\n", "bin": "a\x00b", "d/": ""})
	cur := tarOf(t, map[string]string{"same.txt": "x\n", "edit.txt": "one\nTWO\n", "new.txt": "hi\n", "bin": "a\x00c", "d/": ""})
	r, err := Diff(bytes.NewReader(base.Bytes()), cur, DiffOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(r.Added, ",") != "new.txt" || strings.Join(r.Deleted, ",") != "gone.txt" || strings.Join(r.Modified, ",") != "bin,edit.txt" {
		t.Fatalf("added %v deleted %v modified %v", r.Added, r.Deleted, r.Modified)
	}
	for _, c := range r.Changes {
		switch c.Path {
		case "edit.txt":
			if !strings.Contains(c.Diff, "-two\n+TWO\n") || !strings.Contains(c.Diff, "--- a/edit.txt") {
				t.Errorf("edit diff: %q", c.Diff)
			}
		case "bin":
			if !c.Binary || c.Diff != "" {
				t.Errorf("binary: %+v", c)
			}
		case "new.txt":
			if !strings.Contains(c.Diff, "+hi") {
				t.Errorf("added diff: %q", c.Diff)
			}
		}
	}
}

func TestGuestPath(t *testing.T) {
	for in, want := range map[string]string{"": "/workspace", "a/b": "/workspace/a/b", "/workspace/x/../y": "/workspace/y"} {
		if got, err := GuestPath(in); err != nil || got != want {
			t.Errorf("GuestPath(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"../etc", "/etc/passwd", "/workspace/../etc", "/workspacefoo"} {
		if _, err := GuestPath(bad); err == nil {
			t.Errorf("GuestPath(%q) accepted", bad)
		}
	}
}

func TestSnapshotsVerifyAndBaseline(t *testing.T) {
	s := Snapshots{Dir: t.TempDir()}
	if _, err := s.Save(Baseline, strings.NewReader("base")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Save("one", strings.NewReader("data")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Save("one", strings.NewReader("again")); err == nil {
		t.Fatal("overwrote a snapshot")
	}
	if err := s.Delete(Baseline); err == nil {
		t.Fatal("deleted the baseline")
	}
	list, _ := s.List()
	if len(list) != 2 || list[0].Name != Baseline {
		t.Fatalf("list: %+v", list)
	}
	// Damage the data: Open refuses it.
	if err := writeFile(s.tarPath("one"), "dat4"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open("one"); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("damaged snapshot opened: %v", err)
	}
	if err := s.Delete("one"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("one"); err == nil {
		t.Fatal("deleted snapshot still there")
	}
}

func writeFile(p, s string) error { return os.WriteFile(p, []byte(s), 0o600) }

func TestHistoryNumbersAndExcerpts(t *testing.T) {
	p := filepath.Join(t.TempDir(), "history.jsonl")
	big := strings.Repeat("x", HistoryExcerpt+100)
	for i, cmd := range []string{"one", "two", "three"} {
		out := "ok"
		if i == 1 {
			out = big
		}
		if err := AppendHistory(p, HistoryEntry{Command: []string{cmd}, Stdout: out}); err != nil {
			t.Fatal(err)
		}
	}
	h, err := ReadHistory(p)
	if err != nil || len(h) != 3 {
		t.Fatalf("read %d entries: %v", len(h), err)
	}
	for i, e := range h {
		if e.Seq != i+1 {
			t.Errorf("entry %d has seq %d", i, e.Seq)
		}
	}
	if !h[1].OutputTruncated || len(h[1].Stdout) != HistoryExcerpt || h[0].OutputTruncated {
		t.Errorf("excerpts: %+v", h[1].OutputTruncated)
	}
}

// bigTar streams a tar holding one file of size bytes (repeated text)
// without holding it.
func bigTar(name string, size int64) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: size}); err != nil {
			pw.CloseWithError(err)
			return
		}
		line := bytes.Repeat([]byte("all work and no play\n"), 3000)
		var n int64
		for n < size {
			k := min(int64(len(line)), size-n)
			if _, err := tw.Write(line[:k]); err != nil {
				pw.CloseWithError(err)
				return
			}
			n += k
		}
		pw.CloseWithError(tw.Close())
	}()
	return pr
}

// A file far larger than the text window streams through: hashed, reported
// as changed without text, and the host allocates a small fraction of it
// (io.ReadAll per entry allocated the whole file).
func TestDiffStreamsLargeFiles(t *testing.T) {
	const size = 256 << 20
	base := tarOf(t, map[string]string{"big.log": "old\n"})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r, err := Diff(bytes.NewReader(base.Bytes()), bigTar("big.log", size), DiffOptions{MaxEntryBytes: 1 << 30})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Changes) != 1 || r.Changes[0].Diff != "" || !strings.Contains(r.Changes[0].Note, "over") {
		t.Fatalf("changes: %+v", r.Changes)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Errorf("diffing a %d MiB file allocated %d MiB", size>>20, alloc>>20)
	}
}

func TestDiffTextWindow(t *testing.T) {
	small := strings.Repeat("x\n", 100)
	large := strings.Repeat("y\n", MaxTextDiff/2+1) // just over the window
	base := tarOf(t, map[string]string{"small": small, "large": large})
	cur := tarOf(t, map[string]string{"small": small + "z\n", "large": large + "z\n"})
	r, err := Diff(bytes.NewReader(base.Bytes()), cur, DiffOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range r.Changes {
		switch c.Path {
		case "small":
			if !strings.Contains(c.Diff, "+z") {
				t.Errorf("small: %+v", c)
			}
		case "large":
			if c.Diff != "" || c.Note == "" {
				t.Errorf("large: diff of %d bytes, note %q", len(c.Diff), c.Note)
			}
		}
	}
}

func TestDiffRefusesHostileStreams(t *testing.T) {
	base := tarOf(t, map[string]string{"a": "x\n"})
	for _, name := range []string{"sparse-gnu.tar", "sparse-pax.tar"} {
		f, err := os.Open(filepath.Join("..", "tarutil", "testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		_, err = Diff(bytes.NewReader(base.Bytes()), f, DiffOptions{MaxEntryBytes: 8 << 30})
		f.Close()
		if !errors.Is(err, tarutil.ErrBadArchive) {
			t.Errorf("%s: %v, want a refused sparse entry", name, err)
		}
	}
	if _, err := Diff(bytes.NewReader(base.Bytes()), bigTar("huge", 1<<40), DiffOptions{MaxEntryBytes: 1 << 30}); !errors.Is(err, tarutil.ErrBadArchive) {
		t.Errorf("oversized entry: %v", err)
	}
	var dup bytes.Buffer
	tw := tar.NewWriter(&dup)
	for i := 0; i < 2; i++ {
		tw.WriteHeader(&tar.Header{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2})
		tw.Write([]byte("y\n"))
	}
	tw.Close()
	if _, err := Diff(bytes.NewReader(base.Bytes()), &dup, DiffOptions{}); !errors.Is(err, tarutil.ErrBadArchive) {
		t.Errorf("duplicate entry: %v", err)
	}
	for _, bad := range []string{"../x", "/etc/passwd"} {
		cur := tarOf(t, map[string]string{bad: "x"})
		if _, err := Diff(bytes.NewReader(base.Bytes()), cur, DiffOptions{}); err == nil {
			t.Errorf("entry %q accepted", bad)
		}
	}
}

// The diff budget bounds the text kept for many changed files.
func TestDiffBudget(t *testing.T) {
	files := map[string]string{}
	body := strings.Repeat("line\n", MaxTextDiff/5-1)
	n := maxDiffText/len(body) + 4
	for i := 0; i < n; i++ {
		files["f"+strconv.Itoa(i)] = body
	}
	r, err := Diff(bytes.NewReader(tarOf(t, nil).Bytes()), tarOf(t, files), DiffOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var text, limited int
	for _, c := range r.Changes {
		text += len(c.Diff)
		if strings.Contains(c.Note, "limit") {
			limited++
		}
	}
	if text > maxDiffText || limited == 0 || len(r.Added) != n {
		t.Errorf("%d files: %d bytes of diff, %d over the limit", n, text, limited)
	}
}

func TestDiffRedact(t *testing.T) {
	base := tarOf(t, map[string]string{"a": "x\n"})
	cur := tarOf(t, map[string]string{"a": "token=hunter2-secret\n", "hunter2-secret.txt": "x"})
	r, err := Diff(bytes.NewReader(base.Bytes()), cur, DiffOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.Redact(redact.New([]string{"hunter2-secret"}))
	b, _ := json.Marshal(r)
	if strings.Contains(string(b), "hunter2") {
		t.Errorf("secret in diff: %s", b)
	}
}
