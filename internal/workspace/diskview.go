package workspace

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/pyro-mcp/pyro/internal/diskimg"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// DiskView is a stopped workspace's /workspace read from its images on the
// host, without booting it: the upper layer over the baseline for a
// layered workspace (overlayfs rules: whiteouts delete, opaque directories
// hide the baseline's content), the one disk otherwise. OpenDiskView is
// the one place that knows the layout. Links are never followed: a path
// through a symlink is refused, so nothing leaves /workspace.
type DiskView struct {
	layers []viewLayer // top first
}

type viewLayer struct {
	img   diskimg.Image
	root  uint32
	upper bool
}

// OpenDiskView opens the /workspace of a workspace whose baseline image is
// base ("" for a single-disk workspace) and whose writable image is disk.
// The caller guarantees no guest runs on them.
func OpenDiskView(ctx context.Context, base, disk string) (*DiskView, error) {
	if base == "" {
		return &DiskView{layers: []viewLayer{{img: diskimg.Image{Path: disk}, root: diskimg.RootIno}}}, nil
	}
	v := &DiskView{}
	upper := diskimg.Image{Path: disk}
	ents, err := upper.List(ctx, diskimg.RootIno)
	if err != nil {
		return nil, fmt.Errorf("read the upper layer: %w", err)
	}
	for _, e := range ents {
		if e.Name == "upper" && e.IsDir() { // absent until the guest first mounted it
			v.layers = append(v.layers, viewLayer{img: upper, root: e.Ino, upper: true})
		}
	}
	v.layers = append(v.layers, viewLayer{img: diskimg.Image{Path: base}, root: diskimg.RootIno})
	return v, nil
}

// DiskNode is one entry of a DiskView.
type DiskNode struct {
	Path string // guest path
	Type string // "file", "dir", "symlink" or "other"
	Perm uint32
	Size int64
	at   []layerIno // a directory's contributing layers, top first; else the one
}

type layerIno struct {
	l   int
	ino uint32
}

func nodeType(d diskimg.Dirent) string {
	switch {
	case d.IsReg():
		return "file"
	case d.IsDir():
		return "dir"
	case d.IsLink():
		return "symlink"
	}
	return "other"
}

// Root is /workspace itself.
func (v *DiskView) Root() DiskNode {
	n := DiskNode{Path: Root, Type: "dir", Perm: 0o755}
	for i, l := range v.layers {
		n.at = append(n.at, layerIno{i, l.root})
	}
	return n
}

// Lookup finds the guest path p (under /workspace, see GuestPath).
func (v *DiskView) Lookup(ctx context.Context, p string) (DiskNode, error) {
	guest, err := GuestPath(p)
	if err != nil {
		return DiskNode{}, err
	}
	n := v.Root()
	rel := strings.TrimPrefix(strings.TrimPrefix(guest, Root), "/")
	if rel == "" {
		return n, nil
	}
	for _, name := range strings.Split(rel, "/") {
		switch n.Type {
		case "dir":
		case "symlink":
			return DiskNode{}, errdefs.New(errdefs.ErrInvalidArgument, "name the link's target instead", "%s is a symlink: disk tools do not follow links", n.Path)
		default:
			return DiskNode{}, errdefs.New(errdefs.ErrInvalidArgument, "", "%s is not a directory", n.Path)
		}
		kids, err := v.ReadDir(ctx, n)
		if err != nil {
			return DiskNode{}, err
		}
		i := sort.Search(len(kids), func(i int) bool { return path.Base(kids[i].Path) >= name })
		if i == len(kids) || path.Base(kids[i].Path) != name {
			return DiskNode{}, errdefs.New(errdefs.ErrNotFound, "", "%s does not exist", path.Join(n.Path, name))
		}
		n = kids[i]
	}
	return n, nil
}

// ReadDir returns a directory's merged entries sorted by name.
func (v *DiskView) ReadDir(ctx context.Context, dir DiskNode) ([]DiskNode, error) {
	if dir.Type != "dir" {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, "", "%s is not a directory", dir.Path)
	}
	merged := map[string]*DiskNode{}
	closed := map[string]bool{} // whited out, or a non-directory / opaque directory above
	for _, li := range dir.at {
		l := v.layers[li.l]
		ents, err := l.img.List(ctx, li.ino)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", dir.Path, err)
		}
		for _, e := range ents {
			if closed[e.Name] {
				continue
			}
			if l.upper && e.IsChar() && l.img.IsWhiteout(ctx, e.Ino) {
				closed[e.Name] = true
				continue
			}
			if have := merged[e.Name]; have != nil {
				if have.Type == "dir" && e.IsDir() {
					have.at = append(have.at, layerIno{li.l, e.Ino})
				}
				continue
			}
			n := &DiskNode{Path: path.Join(dir.Path, e.Name), Type: nodeType(e), Perm: e.Perm(), at: []layerIno{{li.l, e.Ino}}}
			if e.IsReg() {
				n.Size = e.Size
			}
			merged[e.Name] = n
			if n.Type != "dir" || (l.upper && l.img.Opaque(ctx, e.Ino)) {
				closed[e.Name] = true // lower layers' entries of this name are hidden
			}
		}
	}
	out := make([]DiskNode, 0, len(merged))
	for _, n := range merged {
		out = append(out, *n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// Walk calls fn for every node below dir, depth first in name order,
// stopping (ErrWalkLimit) after max nodes.
func (v *DiskView) Walk(ctx context.Context, dir DiskNode, max int, fn func(DiskNode) error) error {
	count := 0
	var walk func(d DiskNode) error
	walk = func(d DiskNode) error {
		kids, err := v.ReadDir(ctx, d)
		if err != nil {
			return err
		}
		for _, k := range kids {
			if count++; count > max {
				return ErrWalkLimit
			}
			if err := fn(k); err != nil {
				return err
			}
			if k.Type == "dir" {
				if err := walk(k); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return walk(dir)
}

// ErrWalkLimit stops a Walk that reached its bound.
var ErrWalkLimit = errors.New("too many entries")

// Read returns at most max bytes of a regular file.
func (v *DiskView) Read(ctx context.Context, n DiskNode, max int64) ([]byte, bool, error) {
	switch n.Type {
	case "file":
	case "dir":
		return nil, false, errdefs.New(errdefs.ErrInvalidArgument, "list it with `pyro workspace disk list`", "%s is a directory", n.Path)
	default:
		return nil, false, errdefs.New(errdefs.ErrInvalidArgument, "", "%s is not a regular file (%s)", n.Path, n.Type)
	}
	li := n.at[0]
	return v.layers[li.l].img.Read(ctx, li.ino, max)
}

// Readlink returns a symlink's target as stored.
func (v *DiskView) Readlink(ctx context.Context, n DiskNode) (string, error) {
	if n.Type != "symlink" {
		return "", nil
	}
	li := n.at[0]
	return v.layers[li.l].img.Readlink(ctx, li.ino)
}

// DiskExportStats says what ExportDisk wrote.
type DiskExportStats struct {
	Files, Dirs, Symlinks, Skipped int
	Bytes                          int64
}

// maxExportEntries bounds the entries of an exported image.
const maxExportEntries = 1_000_000

// ExportDisk writes /workspace as a fresh raw ext4 image at out: the merged
// tree is copied into a private staging directory beside out with our own
// modes (0644/0755 files, 0755 directories, no owners, no setuid bits, no
// devices; symlinks as they are, never followed), runtime state left out
// (lost+found at the top, pyro's staging files), and mke2fs -d builds the
// image from it. At most maxBytes of content are copied. out is replaced
// atomically.
func ExportDisk(ctx context.Context, v *DiskView, out string, maxBytes int64) (DiskExportStats, error) {
	var st DiskExportStats
	// A confined output (MCP) is a /proc/self/fd path: mke2fs, a child
	// process, must see our descriptor, not its own.
	if rest, ok := strings.CutPrefix(out, "/proc/self/"); ok {
		out = "/proc/" + strconv.Itoa(os.Getpid()) + "/" + rest
	}
	staging, err := os.MkdirTemp(filepath.Dir(out), ".pyro-disk-export-")
	if err != nil {
		return st, errdefs.Wrap(errdefs.ErrFailedPrecondition, err, "check the output directory", "staging beside %s", out)
	}
	defer os.RemoveAll(staging)
	if err := os.Chmod(staging, 0o700); err != nil {
		return st, err
	}
	tree := filepath.Join(staging, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		return st, err
	}
	root := v.Root()
	err = v.Walk(ctx, root, maxExportEntries, func(n DiskNode) error {
		rel := strings.TrimPrefix(n.Path, Root+"/")
		name := path.Base(rel)
		if rel == "lost+found" || strings.HasPrefix(name, ".pyro-write-") {
			st.Skipped++
			return nil
		}
		if name == "." || name == ".." || len(name) > 255 {
			return errdefs.New(errdefs.ErrFailedPrecondition, "", "the image holds an invalid name in %s", path.Dir(n.Path))
		}
		host := filepath.Join(tree, filepath.FromSlash(rel))
		if _, err := os.Lstat(filepath.Dir(host)); err != nil {
			st.Skipped++ // its directory was skipped
			return nil
		}
		switch n.Type {
		case "dir":
			st.Dirs++
			return os.Mkdir(host, 0o755)
		case "symlink":
			target, err := v.Readlink(ctx, n)
			if err != nil {
				return err
			}
			st.Symlinks++
			return os.Symlink(target, host)
		case "file":
			mode := fs.FileMode(0o644)
			if n.Perm&0o111 != 0 {
				mode = 0o755
			}
			f, err := os.OpenFile(host, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
			if err != nil {
				return err
			}
			li := n.at[0]
			written, err := v.layers[li.l].img.Dump(ctx, li.ino, f, maxBytes-st.Bytes)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			st.Bytes += written
			st.Files++
			return err
		}
		st.Skipped++
		return nil
	})
	if errors.Is(err, ErrWalkLimit) {
		return st, errdefs.New(errdefs.ErrFailedPrecondition, "", "/workspace holds more than %d entries", maxExportEntries)
	}
	if err != nil {
		return st, err
	}
	// Room for the content, the metadata and the journal; sparse anyway.
	size := st.Bytes + st.Bytes/4 + int64(st.Files+st.Dirs+st.Symlinks)*8192 + 64<<20
	img := filepath.Join(staging, "disk.ext4")
	if err := mkfs(ctx, img, size, "-L", "workspace", "-d", tree); err != nil {
		return st, err
	}
	if err := os.Chmod(img, 0o644); err != nil {
		return st, err
	}
	if err := syncFile(img); err != nil {
		return st, err
	}
	return st, os.Rename(img, out)
}
