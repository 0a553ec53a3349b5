package cli

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestServeProject: without --project-path the server's project is the
// checkout it starts in (from a subdirectory too), none outside one;
// --project-path "" turns it off; a --project-path outside any checkout
// is an error rather than silently nothing.
func TestServeProject(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed")
	}
	repo, _ := filepath.EvalSymlinks(t.TempDir())
	if out, err := exec.Command("git", "-C", repo, "init", "-q").CombinedOutput(); err != nil {
		t.Fatalf("git init: %v %s", err, out)
	}
	sub := filepath.Join(repo, "sub")
	if err := exec.Command("mkdir", sub).Run(); err != nil {
		t.Fatal(err)
	}
	plain, _ := filepath.EvalSymlinks(t.TempDir())
	ctx := context.Background()

	t.Chdir(sub)
	if got, err := serveProject(ctx, false, ""); err != nil || got != repo {
		t.Fatalf("default in a checkout: %q %v, want %q", got, err, repo)
	}
	if got, err := serveProject(ctx, true, ""); err != nil || got != "" {
		t.Fatalf(`--project-path "": %q %v`, got, err)
	}
	t.Chdir(plain)
	if got, err := serveProject(ctx, false, ""); err != nil || got != "" {
		t.Fatalf("default outside a checkout: %q %v", got, err)
	}
	if got, err := serveProject(ctx, true, sub); err != nil || got != repo {
		t.Fatalf("--project-path sub: %q %v", got, err)
	}
	if _, err := serveProject(ctx, true, plain); err == nil {
		t.Fatal("--project-path outside a checkout: no error")
	}
}
