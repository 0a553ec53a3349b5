package agent

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// A restored guest rewrites /etc/hosts and /etc/machine-id in place (the
// same inode: no unlink and create on the overlay root), but never writes
// through a link, and creates a missing file.
func TestRewriteFile(t *testing.T) {
	dir := t.TempDir()
	ino := func(p string) uint64 {
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Ino
	}
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	plain := filepath.Join(dir, "machine-id")
	if err := os.WriteFile(plain, []byte("old old old old\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	before := ino(plain)
	if err := rewriteFile(plain, []byte("new\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	if got := read(plain); got != "new\n" || ino(plain) != before {
		t.Errorf("regular file: %q, inode %d -> %d (want rewritten in place)", got, before, ino(plain))
	}

	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "hosts")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := rewriteFile(link, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Lstat(link); !st.Mode().IsRegular() || read(link) != "mine" || read(target) != "keep" {
		t.Errorf("link: now %v %q, its target %q (want a regular file, target untouched)", st.Mode(), read(link), read(target))
	}

	missing := filepath.Join(dir, "missing")
	if err := rewriteFile(missing, []byte("x"), 0o444); err != nil || read(missing) != "x" {
		t.Errorf("missing file: %v", err)
	}
	copyUp(filepath.Join(dir, "absent"), 0o444)
	if got := read(filepath.Join(dir, "absent")); got != "" {
		t.Errorf("copyUp of a missing file: %q, want an empty file", got)
	}
}

func TestIdentityNames(t *testing.T) {
	for s, want := range map[string]bool{"pyro-0a1b2c3d": true, "a": true, "-a": false, "a-": false, "A": false,
		"a_b": false, "": false, string(make([]byte, 64)): false} {
		if isHostname(s) != want {
			t.Errorf("isHostname(%q) = %v", s, !want)
		}
	}
	for s, want := range map[string]bool{"0123456789abcdef0123456789abcdef": true, "0123456789ABCDEF0123456789abcdef": false,
		"0123456789abcdef0123456789abcde": false, "0123456789abcdef0123456789abcdeg": false} {
		if isMachineID(s) != want {
			t.Errorf("isMachineID(%q) = %v", s, !want)
		}
	}
}

// Every booted guest's machine-id is 32 hex digits of its own.
func TestNewMachineID(t *testing.T) {
	a, b := newMachineID(), newMachineID()
	if !isMachineID(a) || !isMachineID(b) || a == b {
		t.Fatalf("machine ids %q %q", a, b)
	}
}
