package unixsock

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A socket whose absolute path is far beyond sun_path's 108 bytes is
// reachable: it is bound relative to its directory and dialled through
// /proc/self/fd.
func TestDialLongPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("deep-directory-name/", 8))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "agent.sock")
	if len(path) <= maxPath {
		t.Fatalf("test path too short: %d", len(path))
	}
	wd, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", "agent.sock")
	os.Chdir(wd)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("ok"))
			c.Close()
		}
	}()
	if !Exists(path) {
		t.Fatal("Exists says no")
	}
	c, err := Dial(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 2)
	if _, err := c.Read(b); err != nil || string(b) != "ok" {
		t.Fatalf("read %q %v", b, err)
	}
}
