package hostwrite

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary serve as the confined tool, as pyro's main
// does: Write re-executes the running binary with HiddenArg.
func TestMain(m *testing.M) {
	if self, err := os.Executable(); err == nil {
		UseTool(self)
	}
	if len(os.Args) > 1 && os.Args[1] == HiddenArg {
		Main(os.Args[2:])
	}
	os.Exit(m.Run())
}

func needTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"debugfs", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	if !Confinable() {
		t.Skip("this kernel has no Landlock: debugfs cannot be confined, so host writes are not used here")
	}
}

// image makes an empty ext4 image with an "upper" directory, as a
// workspace's upper disk holds.
func image(t *testing.T) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "upper.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "root_owner=0:0", img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v: %s", err, out)
	}
	if out, err := exec.Command("debugfs", "-w", "-R", "mkdir upper", img).CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v: %s", err, out)
	}
	return img
}

func stat(t *testing.T, img, p string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-c", "-R", `stat "`+p+`"`, img).Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestWriteTree(t *testing.T) {
	needTools(t)
	img := image(t)
	src := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "t", "sub dir"), 0o755))
	must(os.WriteFile(filepath.Join(src, "t", "sub dir", "a.bin"), []byte("hello host"), 0o644))
	must(os.WriteFile(filepath.Join(src, "t", "suid"), []byte("x"), 0o755))
	must(syscall.Chmod(filepath.Join(src, "t", "suid"), 0o4755))
	must(os.Symlink("sub dir/a.bin", filepath.Join(src, "t", "link")))
	mt := time.Unix(1700000000, 123456789)
	must(os.Chtimes(filepath.Join(src, "t", "sub dir", "a.bin"), mt, mt))
	must(syscall.Chmod(filepath.Join(src, "t", "sub dir"), 0o1750))
	// Files owned by someone else (as a non-root caller's are): what is
	// written is root's all the same (the script relies on debugfs making
	// every inode root's, whoever runs it).
	if os.Geteuid() == 0 {
		for _, f := range []string{"t/sub dir/a.bin", "t/suid", "t/link"} {
			must(os.Lchown(filepath.Join(src, f), 1234, 1234))
		}
		must(syscall.Chmod(filepath.Join(src, "t", "suid"), 0o4755)) // chown cleared it
	}
	script, st, err := Script(src, "/upper")
	must(err)
	if st.Files != 3 || st.Dirs != 2 || st.Bytes != 11 {
		t.Fatalf("stats %+v", st)
	}
	must(Write(context.Background(), img, src, script))
	out, err := exec.Command("debugfs", "-c", "-R", `cat "/upper/t/sub dir/a.bin"`, img).Output()
	must(err)
	if string(out) != "hello host" {
		t.Fatalf("content %q", out)
	}
	for p, want := range map[string][]string{
		"/upper/t/sub dir/a.bin": {"Mode:  0644", "User:     0   Group:     0", "mtime: 0x6553f100:1d6f3454"},
		"/upper/t/suid":          {"Mode:  04755", "User:     0   Group:     0"},
		"/upper/t/sub dir":       {"Type: directory", "Mode:  01750", "User:     0   Group:     0"},
		"/upper/t":               {"Type: directory", "Mode:  0755", "User:     0   Group:     0"},
		"/upper/t/link":          {"Type: symlink", `Fast link dest: "sub dir/a.bin"`, "User:     0   Group:     0"},
	} {
		s := stat(t, img, p)
		for _, w := range want {
			if !strings.Contains(s, w) {
				t.Errorf("%s: want %q in\n%s", p, w, s)
			}
		}
	}
}

func TestScriptRefusesUnquotableNames(t *testing.T) {
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "a\"\nclose"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Script(src, "/upper"); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("err = %v, want ErrUnsupported", err)
	}
}

// The image is the guest's: a superblock it overwrote with garbage, or a
// file where the push's directory should be, makes the write fail fast and
// say so (the caller then throws the copy away).
func TestWriteHostileImage(t *testing.T) {
	needTools(t)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	script, _, err := Script(src, "/upper")
	if err != nil {
		t.Fatal(err)
	}
	garbage := image(t)
	f, err := os.OpenFile(garbage, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 1<<20)
	for i := range junk {
		junk[i] = byte(i*7 + 3)
	}
	if _, err := f.WriteAt(junk, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	start := time.Now()
	if err := Write(context.Background(), garbage, src, script); !errors.Is(err, ErrWrite) {
		t.Fatalf("garbage superblock: err = %v, want ErrWrite", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %s", d)
	}
	// "upper" a regular file: the write fails, nothing outside the image
	// is touched.
	img := filepath.Join(t.TempDir(), "u.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v: %s", err, out)
	}
	if out, err := exec.Command("debugfs", "-w", "-R", "write /etc/hostname upper", img).CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v: %s", err, out)
	}
	if err := Write(context.Background(), img, src, script); !errors.Is(err, ErrWrite) {
		t.Fatalf("file in the way: err = %v, want ErrWrite", err)
	}
}

// A run past its deadline is killed, with its process group.
func TestWriteTimeout(t *testing.T) {
	needTools(t)
	img := image(t)
	old := Timeout
	Timeout = 50 * time.Millisecond
	defer func() { Timeout = old }()
	// Many commands keep debugfs busy past the deadline.
	script := []byte(strings.Repeat("stat /upper\n", 200000))
	err := Write(context.Background(), img, t.TempDir(), script)
	if err == nil || !strings.Contains(err.Error(), "took longer") {
		t.Fatalf("err = %v", err)
	}
}

// The image is hostile input to debugfs: whatever a crafted image makes it
// do, it reaches no host file but the staged tree (read) and the image
// (write). Played here by script commands a subverted debugfs could run:
// reading a host file outside the tree, writing one (dump, rdump).
func TestWriteConfined(t *testing.T) {
	needTools(t)
	img := image(t)
	src := t.TempDir()
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("host secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Reading outside the tree: debugfs cannot open the file.
	err := Write(context.Background(), img, src, []byte("write "+q(secret)+" /upper/stolen\n"))
	if errors.Is(err, ErrUnconfinable) {
		t.Skip("no Landlock on this kernel: the host path is not used here")
	}
	if !errors.Is(err, ErrWrite) {
		t.Fatalf("read outside the tree: err = %v, want ErrWrite", err)
	}
	if out, _ := exec.Command("debugfs", "-c", "-R", "cat /upper/stolen", img).Output(); strings.Contains(string(out), "host secret") {
		t.Fatal("a host file outside the staged tree reached the image")
	}
	// Writing outside the image: dump and rdump create host files.
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	script, _, err := Script(src, "/upper")
	if err != nil {
		t.Fatal(err)
	}
	script = append(script, []byte("dump /upper/f "+q(filepath.Join(outside, "dumped"))+"\nrdump /upper "+q(outside)+"\n")...)
	if err := Write(context.Background(), img, src, script); !errors.Is(err, ErrWrite) {
		t.Fatalf("write outside the image: err = %v, want ErrWrite", err)
	}
	for _, p := range []string{"dumped", "upper"} {
		if _, err := os.Lstat(filepath.Join(outside, p)); err == nil {
			t.Fatalf("the tool wrote %s on the host", p)
		}
	}
}
