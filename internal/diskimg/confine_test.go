package diskimg

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/hostwrite"
)

// TestMain lets this test binary serve as the confined debugfs, as pyro's
// main does, so the tests here read images the way pyro does.
func TestMain(m *testing.M) {
	if self, err := os.Executable(); err == nil {
		hostwrite.UseTool(self)
	}
	if len(os.Args) > 1 && os.Args[1] == hostwrite.HiddenArg {
		hostwrite.Main(os.Args[2:])
	}
	os.Exit(m.Run())
}

// The image is the guest's: a debugfs subverted by it must reach nothing on
// the host. Played by commands a subverted debugfs could run: rdump and
// dump write host files; neither may, and the image itself stays as it was.
func TestDebugfsConfinedToReading(t *testing.T) {
	for _, tool := range []string{"mke2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	if !hostwrite.Confinable() {
		t.Skip("this kernel has no Landlock: debugfs runs unconfined here")
	}
	tree := t.TempDir()
	if err := os.WriteFile(filepath.Join(tree, "f"), []byte("guest data"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "img")
	if out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v: %s", err, out)
	}
	before, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	outside := t.TempDir()
	im := Image{Path: img}
	for _, cmd := range []string{"rdump / " + outside, "dump /f " + filepath.Join(outside, "f"), "cat /f"} {
		c, done, err := im.command(context.Background(), "-c", "-R", cmd)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := c.CombinedOutput()
		done()
		if cmd == "cat /f" && !strings.Contains(string(out), "guest data") {
			t.Fatalf("a confined debugfs cannot read its image: %q", out)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("a confined debugfs wrote on the host: %v", ents)
	}
	after, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if string(after) != string(before) {
		t.Fatal("reading the image changed it")
	}
}
