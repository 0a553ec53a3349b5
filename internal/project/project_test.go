package project

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

func run(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

func write(t *testing.T, path, body string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
}

// TestProjectSeed: only tracked files travel (not .git, not ignored or
// untracked ones), symlinks stay symlinks (their targets are not read),
// and a tracked path whose directory was swapped for a symlink out of the
// checkout is skipped instead of followed.
func TestProjectSeed(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed")
	}
	root := t.TempDir()
	outside := t.TempDir()
	write(t, filepath.Join(outside, "secret"), "host secret", 0o600)
	run(t, root, "git", "init", "-q")
	write(t, filepath.Join(root, "main.go"), "package main\n", 0o644)
	write(t, filepath.Join(root, "scripts", "run.sh"), "#!/bin/sh\n", 0o755)
	write(t, filepath.Join(root, "sub", "x.txt"), "x", 0o644)
	write(t, filepath.Join(root, "gone.txt"), "soon deleted", 0o644)
	write(t, filepath.Join(root, ".gitignore"), ".env\n", 0o644)
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	run(t, root, "git", "add", "-A")
	run(t, root, "git", "commit", "-qm", "init")
	write(t, filepath.Join(root, ".env"), "TOKEN=ignored", 0o600)
	write(t, filepath.Join(root, "untracked.txt"), "new", 0o644)
	os.Remove(filepath.Join(root, "gone.txt"))
	// sub/ becomes a symlink to a directory outside the checkout.
	os.RemoveAll(filepath.Join(root, "sub"))
	write(t, filepath.Join(outside, "x.txt"), "outside x", 0o644)
	if err := os.Symlink(outside, filepath.Join(root, "sub")); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	got, err := Root(ctx, filepath.Join(root, "scripts"))
	if err != nil {
		t.Fatal(err)
	}
	if real, _ := filepath.EvalSymlinks(root); got != real && got != root {
		t.Fatalf("root %q, want %q", got, root)
	}
	if _, err := Root(ctx, outside); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("not a checkout: %v", err)
	}
	files, err := Files(ctx, got)
	if err != nil {
		t.Fatal(err)
	}
	rc, st, err := Tar(got, files)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	entries := map[string]*tar.Header{}
	bodies := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		entries[h.Name] = h
		b, _ := io.ReadAll(tr)
		bodies[h.Name] = string(b)
	}
	var names []string
	for n := range entries {
		names = append(names, n)
	}
	slices.Sort(names)
	want := []string{".gitignore", "link", "main.go", "scripts/", "scripts/run.sh"}
	if !slices.Equal(names, want) {
		t.Fatalf("entries %v, want %v", names, want)
	}
	if entries["link"].Typeflag != tar.TypeSymlink || bodies["link"] != "" {
		t.Fatalf("symlink followed: %+v %q", entries["link"], bodies["link"])
	}
	if entries["scripts/run.sh"].Mode != 0o755 || bodies["main.go"] != "package main\n" {
		t.Fatalf("modes or content: %o %q", entries["scripts/run.sh"].Mode, bodies["main.go"])
	}
	if st.Files != 4 || st.Skipped != 2 {
		t.Fatalf("stats %+v (want 4 files; gone.txt and sub/x.txt skipped)", *st)
	}
}
