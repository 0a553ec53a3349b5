package lifecycle

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/instance"
)

// A process killed with -9 while it flattened a workspace's layers or
// replaced a file leaves .flat-<pid>.raw and .<name>.tmp-* files: the
// next start of the instance removes them, and nothing else (a living
// process's flattened copy, a temporary file written a moment ago, other
// names, directories).
func TestStartSweepsKilledWritersFiles(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	dir, rec := f.create(t, newRecord(instance.KindWorkspace))
	layers := filepath.Join(string(dir), "layers")
	if err := os.Mkdir(layers, 0o700); err != nil {
		t.Fatal(err)
	}
	// A pid that is not running: a child that exited and was waited for.
	dead := deadPid(t)
	old := time.Now().Add(-2 * tempFileAge)
	gone := []string{
		filepath.Join(string(dir), fmt.Sprintf(".flat-%d.raw", dead)),
		filepath.Join(string(dir), ".record.json.tmp-123456"),
		filepath.Join(string(dir), ".disk.ext4.tmp-99"),
		filepath.Join(layers, ".top.tmp-4242"),
	}
	kept := []string{
		filepath.Join(string(dir), fmt.Sprintf(".flat-%d.raw", os.Getpid())), // its writer lives
		filepath.Join(string(dir), ".flat-x.raw"),
		filepath.Join(string(dir), "record.json.tmp-1"), // not hidden
		filepath.Join(string(dir), ".tmp-1"),            // another pattern (snapshots)
		filepath.Join(layers, "1.qcow2"),
	}
	for _, p := range append(append([]string{}, gone...), kept...) {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	fresh := filepath.Join(string(dir), ".secrets.json.tmp-7") // being written now
	if err := os.WriteFile(fresh, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	kept = append(kept, fresh)
	adir := filepath.Join(string(dir), ".x.tmp-dir") // a directory, not a file
	if err := os.Mkdir(adir, 0o700); err != nil {
		t.Fatal(err)
	}
	kept = append(kept, adir)
	outside := filepath.Join(t.TempDir(), ".y.tmp-1") // behind a link: not followed
	if err := os.WriteFile(outside, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chtimes(outside, old, old)
	if err := os.Symlink(filepath.Dir(outside), filepath.Join(string(dir), "link")); err != nil {
		t.Fatal(err)
	}
	kept = append(kept, outside)

	if _, err := f.m.Start(ctx, dir, rec); err != nil {
		t.Fatal(err)
	}
	defer f.m.Stop(ctx, dir)
	for _, p := range gone {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived the start: %v", p, err)
		}
	}
	for _, p := range kept {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
}

// deadPid returns the pid of a process that has exited.
func deadPid(t *testing.T) int {
	t.Helper()
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	return p.Pid
}
