package workspace

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	r, err := Diff(base, cur)
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
