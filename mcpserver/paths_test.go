package mcpserver

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// noRoots is a client that does not offer MCP roots.
var noRoots = &mcp.ClientOptions{Capabilities: &mcp.ClientCapabilities{}}

// tree makes an allowed directory and an outside one, with a symlink from
// the first into the second.
func tree(t *testing.T) (allowed, outside string) {
	t.Helper()
	allowed, outside = t.TempDir(), t.TempDir()
	for _, d := range []string{allowed, outside} {
		if err := os.MkdirAll(filepath.Join(d, "dir"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "dir", "f.txt"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(allowed, "out")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("dir", filepath.Join(allowed, "in")); err != nil { // relative: stays inside
		t.Fatal(err)
	}
	return allowed, outside
}

// wantPathRefused calls a tool that names path and expects a confinement
// error of category prefix, hinting at --allow-path.
func wantPathRefused(t *testing.T, cs *mcp.ClientSession, tool string, args map[string]any, prefix string) {
	t.Helper()
	res, text := callTool(t, cs, tool, args)
	if !res.IsError || !strings.HasPrefix(text, prefix) {
		t.Errorf("%s %v: want %q..., got isError=%v %q", tool, args, prefix, res.IsError, text)
		return
	}
	if prefix == "failed_precondition: " && !strings.Contains(text, "--allow-path") {
		t.Errorf("%s %v: hint does not name --allow-path: %q", tool, args, text)
	}
}

// wantPathAccepted calls workspace_sync_push on an unknown workspace: a
// path that passes confinement reaches the SDK, which says not_found
// about the workspace.
func wantPathAccepted(t *testing.T, cs *mcp.ClientSession, path string) {
	t.Helper()
	res, text := callTool(t, cs, "workspace_sync_push", map[string]any{"workspace_id": "nope", "source_path": path})
	if !res.IsError || !strings.HasPrefix(text, "not_found: ") || !strings.Contains(text, "nope") {
		t.Errorf("source_path %q: want the workspace's not_found, got %q", path, text)
	}
}

func TestMCPPathsConfined(t *testing.T) {
	allowed, outside := tree(t)
	cs := connectWith(t, Options{AllowPaths: []string{allowed}}, table, noRoots)

	wantPathAccepted(t, cs, filepath.Join(allowed, "dir"))
	wantPathAccepted(t, cs, filepath.Join(allowed, "in")) // a symlink that stays inside
	for _, p := range []string{
		outside, // absolute, outside
		"/etc",  // the host's configuration
		filepath.Join(allowed, "..", filepath.Base(outside)), // ".." out
		filepath.Join(allowed, "dir", "..", "..", filepath.Base(outside), "dir"),
		filepath.Join(allowed, "out"),        // a symlink out
		filepath.Join(allowed, "out", "dir"), // through a symlink out
		"/proc/self/cwd",                     // a pseudo file system
		"relative/elsewhere",                 // relative to the server's cwd, not allowed here
	} {
		wantPathRefused(t, cs, "workspace_sync_push", map[string]any{"workspace_id": "nope", "source_path": p}, "failed_precondition: ")
		wantPathRefused(t, cs, "workspace_create", map[string]any{"seed_path": p}, "failed_precondition: ")
	}

	// Output paths: the parent beneath a root, the name not a symlink.
	wantPathRefused(t, cs, "workspace_export", map[string]any{"workspace_id": "nope", "path": "a", "output_path": filepath.Join(outside, "new")}, "failed_precondition: ")
	wantPathRefused(t, cs, "workspace_export", map[string]any{"workspace_id": "nope", "path": "a", "output_path": filepath.Join(allowed, "out", "new")}, "failed_precondition: ")
	wantPathRefused(t, cs, "workspace_export", map[string]any{"workspace_id": "nope", "path": "a", "output_path": filepath.Join(allowed, "out")}, "invalid_argument: ")
	wantPathRefused(t, cs, "workspace_export", map[string]any{"workspace_id": "nope", "path": "a", "output_path": filepath.Join(allowed, "dir")}, "already_exists: ")
	res, text := callTool(t, cs, "workspace_export", map[string]any{"workspace_id": "nope", "path": "a", "output_path": filepath.Join(allowed, "new")})
	if !res.IsError || !strings.HasPrefix(text, "not_found: ") {
		t.Errorf("export beneath the root: want the workspace's not_found, got %q", text)
	}
}

func TestMCPSecretFiles(t *testing.T) {
	allowed, outside := tree(t)
	big := filepath.Join(allowed, "big")
	if err := os.WriteFile(big, bytes.Repeat([]byte("a"), maxSecretFileBytes+1), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(allowed, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cs := connectWith(t, Options{AllowPaths: []string{allowed}}, table, noRoots)
	secret := func(p string) map[string]any {
		return map[string]any{"secrets": []any{map[string]any{"name": "TOKEN", "file_path": p}}}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		wantPathRefused(t, cs, "workspace_create", secret(big), "invalid_argument: ")
		wantPathRefused(t, cs, "workspace_create", secret(fifo), "invalid_argument: ") // and does not block on the fifo
		wantPathRefused(t, cs, "workspace_create", secret(filepath.Join(allowed, "dir")), "invalid_argument: ")
		wantPathRefused(t, cs, "workspace_create", secret(filepath.Join(outside, "dir", "f.txt")), "failed_precondition: ")
		wantPathRefused(t, cs, "workspace_create", secret(filepath.Join(allowed, "out", "dir", "f.txt")), "failed_precondition: ")
		wantPathRefused(t, cs, "workspace_create", secret("/proc/self/environ"), "failed_precondition: ")
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("secret checks hang (a fifo opened blocking?)")
	}

	// A good file comes back through a sealed memfd with its content.
	c, err := newConfinement([]string{allowed}, true)
	if err != nil {
		t.Fatal(err)
	}
	p, closeFn, err := c.secretFile(nil, "file_path", filepath.Join(allowed, "dir", "f.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	if b, err := os.ReadFile(p); err != nil || string(b) != "x" {
		t.Fatalf("secret through %s: %q %v", p, b, err)
	}
	if err := os.WriteFile(p, []byte("changed"), 0o600); err == nil {
		t.Fatal("the sealed secret copy is writable")
	}
}

// TestMCPOutputThroughPinnedParent: the SDK writes the export beneath the
// descriptor of the checked parent (temporary directory, then rename), so
// the file lands in the real directory.
func TestMCPOutputThroughPinnedParent(t *testing.T) {
	allowed, _ := tree(t)
	c, err := newConfinement([]string{allowed}, true)
	if err != nil {
		t.Fatal(err)
	}
	sdkPath, real, done, err := c.output(nil, "output_path", filepath.Join(allowed, "in", "exported"))
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	if want := filepath.Join(allowed, "dir", "exported"); real != want {
		t.Errorf("real path %q, want %q", real, want)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(sdkPath), ".pyro-export-*")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "f"), []byte("y"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(tmp, "f"), sdkPath); err != nil {
		t.Fatal(err)
	}
	os.Remove(tmp)
	if b, err := os.ReadFile(real); err != nil || string(b) != "y" {
		t.Fatalf("exported file: %q %v", b, err)
	}
}

func TestMCPPseudoFSNeverRoots(t *testing.T) {
	for _, d := range []string{"/proc", "/proc/self", "/sys", "/dev", "/dev/shm"} {
		if _, err := newConfinement([]string{d}, true); err == nil {
			t.Errorf("--allow-path %s accepted", d)
		}
	}
	// With "/" allowed, the pseudo file systems beneath it stay out, by
	// name and through a symlink.
	allowed, _ := tree(t)
	if err := os.Symlink("/proc/self/environ", filepath.Join(allowed, "env")); err != nil {
		t.Fatal(err)
	}
	cs := connectWith(t, Options{AllowPaths: []string{"/"}}, table, noRoots)
	for _, p := range []string{"/proc/self", "/sys/kernel", "/dev/null", filepath.Join(allowed, "env")} {
		wantPathRefused(t, cs, "workspace_sync_push", map[string]any{"workspace_id": "nope", "source_path": p}, "failed_precondition: ")
	}
	// A client root in /proc is ignored, not trusted.
	client := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
	client.AddRoots(&mcp.Root{URI: "file:///proc"})
	cs = connectClient(t, Options{AllowPaths: []string{allowed}}, client)
	wantPathRefused(t, cs, "workspace_sync_push", map[string]any{"workspace_id": "nope", "source_path": "/proc/self"}, "failed_precondition: ")
	wantPathAccepted(t, cs, filepath.Join(allowed, "dir"))
}

// TestMCPClientRoots: the client's roots are allowed, and a
// notifications/roots/list_changed makes the server ask again.
func TestMCPClientRoots(t *testing.T) {
	allowed, _ := tree(t)
	b, c := t.TempDir(), t.TempDir()
	client := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
	client.AddRoots(&mcp.Root{URI: "file://" + b})
	cs := connectClient(t, Options{AllowPaths: []string{allowed}}, client)
	wantPathAccepted(t, cs, b)
	wantPathAccepted(t, cs, filepath.Join(allowed, "dir")) // --allow-path still counts
	wantPathRefused(t, cs, "workspace_sync_push", map[string]any{"workspace_id": "nope", "source_path": c}, "failed_precondition: ")

	client.RemoveRoots("file://" + b)
	client.AddRoots(&mcp.Root{URI: "file://" + c})
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, text := callTool(t, cs, "workspace_sync_push", map[string]any{"workspace_id": "nope", "source_path": c})
		if res.IsError && strings.HasPrefix(text, "not_found: ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new root never allowed: %s", text)
		}
		time.Sleep(20 * time.Millisecond)
	}
	wantPathRefused(t, cs, "workspace_sync_push", map[string]any{"workspace_id": "nope", "source_path": b}, "failed_precondition: ")

	// A server for remote clients ignores their roots.
	client = mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
	client.AddRoots(&mcp.Root{URI: "file://" + b})
	cs = connectClient(t, Options{AllowPaths: []string{allowed}, IgnoreClientRoots: true}, client)
	wantPathRefused(t, cs, "workspace_sync_push", map[string]any{"workspace_id": "nope", "source_path": b}, "failed_precondition: ")
	wantPathAccepted(t, cs, filepath.Join(allowed, "dir"))
}

func TestMCPHostCompatNeedsServerFlag(t *testing.T) {
	for _, c := range []struct {
		tool string
		args map[string]any
	}{
		{"vm_run", map[string]any{"command": "true", "allow_host_compat": true}},
		{"vm_create", map[string]any{"allow_host_compat": true}},
		{"workspace_create", map[string]any{"allow_host_compat": true}},
	} {
		cs := connectWith(t, Options{}, table, nil)
		res, text := callTool(t, cs, c.tool, c.args)
		if !res.IsError || !strings.HasPrefix(text, "failed_precondition: ") || !strings.Contains(text, "--allow-host-compat") {
			t.Errorf("%s without the server flag: %q", c.tool, text)
		}
		// With the flag the call goes on to the SDK (which fails later here,
		// for want of an environment, not for the flag).
		cs = connectWith(t, Options{AllowHostCompat: true}, table, nil)
		if _, text := callTool(t, cs, c.tool, c.args); strings.Contains(text, "--allow-host-compat") {
			t.Errorf("%s with the server flag still refused: %q", c.tool, text)
		}
	}
}

// TestMCPSymlinkedRoot: a root named through a symlink (a symlinked
// working directory, say) matches paths in both spellings.
func TestMCPSymlinkedRoot(t *testing.T) {
	allowed, _ := tree(t)
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(allowed, link); err != nil {
		t.Fatal(err)
	}
	cs := connectWith(t, Options{AllowPaths: []string{link}}, table, noRoots)
	wantPathAccepted(t, cs, filepath.Join(link, "dir"))
	wantPathAccepted(t, cs, filepath.Join(allowed, "dir"))
	wantPathRefused(t, cs, "workspace_sync_push", map[string]any{"workspace_id": "nope", "source_path": filepath.Join(link, "out")}, "failed_precondition: ")
}

// TestMCPDefaultRootNeverHomeOrSlash: without --allow-path the working
// directory is allowed, but not when it is "/" or the user's home (or an
// ancestor of it): clients often start servers there, and then the model
// would read ~/.ssh through seed_path and create ~/.ssh/authorized_keys or
// ~/.bash_profile through workspace_export.
func TestMCPDefaultRootNeverHomeOrSlash(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", filepath.Join(home, "user"))
	if err := os.Mkdir(filepath.Join(home, "user"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, wd := range []string{"/", home, filepath.Join(home, "user")} {
		t.Chdir(wd)
		c, err := newConfinement(nil, true)
		if err != nil {
			t.Fatalf("cwd %s: %v", wd, err)
		}
		if len(c.allow) != 0 {
			t.Errorf("cwd %s: implicitly allowed %v", wd, c.allow)
		}
	}
	// A project directory beneath home is still the default, and an
	// explicit --allow-path may name anything but the pseudo file systems.
	proj := filepath.Join(home, "user", "proj")
	if err := os.Mkdir(proj, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(proj)
	if c, err := newConfinement(nil, true); err != nil || len(c.allow) != 1 {
		t.Errorf("cwd %s: allow %v, %v", proj, c.allow, err)
	}
	if c, err := newConfinement([]string{filepath.Join(home, "user")}, true); err != nil || len(c.allow) != 1 {
		t.Errorf("--allow-path home: allow %v, %v", c.allow, err)
	}
}

// TestMCPClientRootWithoutPath: a file URI without an absolute path
// ("file:rel", "file://localhost") names no directory; it must not allow
// the server's working directory (filepath.Abs("") is the cwd).
func TestMCPClientRootWithoutPath(t *testing.T) {
	allowed, _ := tree(t)
	wd := t.TempDir()
	if err := os.Mkdir(filepath.Join(wd, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(wd)
	for _, uri := range []string{"file:rel", "file://localhost", "file:"} {
		client := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
		client.AddRoots(&mcp.Root{URI: uri})
		cs := connectClient(t, Options{AllowPaths: []string{allowed}}, client)
		wantPathRefused(t, cs, "workspace_sync_push", map[string]any{"workspace_id": "nope", "source_path": filepath.Join(wd, "d")}, "failed_precondition: ")
	}
}
