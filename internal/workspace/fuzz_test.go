package workspace

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// FuzzHostTar feeds arbitrary bytes, as a guest could send them, to the
// host's two decoders of guest tar streams: export (untrusted extraction
// and placement) and diff. Neither may panic; export may write nothing
// outside its output, no setuid/setgid/sticky bit, no mode beyond the
// umask, no device or fifo and no symlink leading out of the tree, and the
// output of a file export is a regular file; a tree diffed against itself
// has no changes.
func FuzzHostTar(f *testing.F) {
	seed := func(hs ...tar.Header) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range hs {
			body := ""
			if h.Typeflag == tar.TypeReg {
				body = "line\n"
				h.Size = int64(len(body))
			}
			tw.WriteHeader(&h)
			tw.Write([]byte(body))
		}
		tw.Close()
		return b.Bytes()
	}
	f.Add(seed(tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o7777}, tar.Header{Name: "suid", Typeflag: tar.TypeReg, Mode: 0o6755}), true)
	f.Add(seed(tar.Header{Name: "id_rsa", Typeflag: tar.TypeSymlink, Linkname: "/root/.ssh/id_rsa"}), false)
	f.Add(seed(tar.Header{Name: "d/x", Typeflag: tar.TypeSymlink, Linkname: "../../etc"}), true)
	f.Add(seed(tar.Header{Name: "dot", Typeflag: tar.TypeSymlink, Linkname: "."}, tar.Header{Name: "up", Typeflag: tar.TypeSymlink, Linkname: "dot/.."}), true)
	f.Add(seed(tar.Header{Name: "f", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}), false)
	f.Add(seed(tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644}, tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "f"}), true)
	f.Add(seed(tar.Header{Name: "p", Typeflag: tar.TypeFifo}, tar.Header{Name: "c", Typeflag: tar.TypeChar}), true)
	f.Add(seed(tar.Header{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644}, tar.Header{Name: "./a", Typeflag: tar.TypeReg, Mode: 0o644}), true)
	for _, name := range []string{"sparse-gnu.tar", "sparse-pax.tar"} {
		if b, err := os.ReadFile(filepath.Join("..", "tarutil", "testdata", name)); err == nil {
			f.Add(b, true)
		}
	}
	umask := tarutil.ProcessUmask()
	f.Fuzz(func(t *testing.T, data []byte, dir bool) {
		if r, err := Diff(bytes.NewReader(data), bytes.NewReader(data), DiffOptions{MaxEntryBytes: 1 << 20}); err == nil && len(r.Changes) != 0 {
			t.Fatalf("a tree differs from itself: %+v", r.Changes)
		}
		_, _ = Diff(bytes.NewReader(seed(tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644})), bytes.NewReader(data), DiffOptions{MaxEntryBytes: 1 << 20})

		base := t.TempDir()
		out := filepath.Join(base, "out")
		kind, guest := agentapi.KindFile, "/workspace/f"
		if dir {
			kind, guest = agentapi.KindDir, "/workspace"
		}
		_, err := Export(bytes.NewReader(data), guest, kind, out, false)
		if ents, _ := os.ReadDir(base); len(ents) > 1 || (len(ents) == 1 && ents[0].Name() != "out") {
			t.Fatalf("export left %v beside its output", ents)
		}
		fi, lerr := os.Lstat(out)
		if lerr != nil {
			return
		}
		if err != nil {
			t.Fatalf("a failed export left its output: %v", err)
		}
		if !dir && !fi.Mode().IsRegular() {
			t.Fatalf("file export wrote a %v", fi.Mode())
		}
		root, err := os.OpenRoot(out)
		if err != nil && dir {
			t.Fatal(err)
		}
		if root != nil {
			defer root.Close()
		}
		filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Lstat(p)
			if err != nil {
				t.Fatal(err)
			}
			m := fi.Mode()
			if m&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky|fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe|fs.ModeSocket) != 0 {
				t.Fatalf("%s: mode %v", p, m)
			}
			if m.IsDir() && m.Perm()&^(0o777&^umask|0o700) != 0 || m.IsRegular() && m.Perm()&umask != 0 {
				t.Fatalf("%s: mode %v beyond umask %03o", p, m, umask)
			}
			if m&fs.ModeSymlink != 0 {
				target, _ := os.Readlink(p)
				rel, _ := filepath.Rel(out, p)
				if strings.HasPrefix(target, "/") {
					t.Fatalf("%s: absolute symlink to %s", p, target)
				}
				if _, err := root.Stat(rel); err != nil && strings.Contains(err.Error(), "escapes") {
					t.Fatalf("%s -> %s leads out of the tree: %v", rel, target, err)
				}
			}
			return nil
		})
	})
}
