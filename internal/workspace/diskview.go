package workspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro/internal/diskimg"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/fsutil"
)

// DiskView is a stopped (or frozen) workspace's /workspace read from its
// images on the host, without the guest: the upper layer over the baseline
// for a layered workspace (overlayfs rules: whiteouts delete, opaque
// directories hide the baseline's content), the one disk otherwise.
// OpenDiskView is the one place that knows the layout. Links are never
// followed: a path through a symlink is refused, so nothing leaves
// /workspace. Directories are read a level at a time, each level in a few
// debugfs runs whatever it holds, and all runs of one view share one
// diskimg.Budget: an upper layer crafted with thousands of directories or
// whiteouts exhausts the budget, not the host.
type DiskView struct {
	layers []viewLayer // top first
	times  bool        // read modification times too (exports)
}

type viewLayer struct {
	img   diskimg.Image
	root  uint32
	upper bool
	// dir is root's path in img ("" for the image's root), for lookups
	// by path.
	dir string
}

// OpenDiskView opens the /workspace of a workspace whose baseline image is
// base ("" for a single-disk workspace) and whose writable image is disk.
// The caller guarantees no guest writes them meanwhile.
func OpenDiskView(ctx context.Context, base, disk string) (*DiskView, error) {
	budget := diskimg.DefaultBudget()
	if base == "" {
		return &DiskView{layers: []viewLayer{{img: diskimg.Image{Path: disk, Budget: budget}, root: diskimg.RootIno}}}, nil
	}
	v := &DiskView{}
	upper := diskimg.Image{Path: disk, Budget: budget}
	ents, err := upper.List(ctx, diskimg.RootIno)
	if err != nil {
		return nil, fmt.Errorf("read the upper layer: %w", err)
	}
	for _, e := range ents {
		if e.Name == "upper" && e.IsDir() { // absent until the guest first mounted it
			v.layers = append(v.layers, viewLayer{img: upper, root: e.Ino, upper: true, dir: "/upper"})
		}
	}
	v.layers = append(v.layers, viewLayer{img: diskimg.Image{Path: base, Budget: budget}, root: diskimg.RootIno})
	return v, nil
}

// DiskNode is one entry of a DiskView.
type DiskNode struct {
	Path  string // guest path
	Type  string // "file", "dir", "symlink" or "other"
	Perm  uint32
	Size  int64
	Link  string     // a symlink's target as stored (at most 4096 bytes)
	Mtime time.Time  // when the view reads times
	at    []layerIno // a directory's contributing layers, top first; else the one
	// ext is a file's extent map when the view read it whole (times).
	ext    []diskimg.Extent
	mapped bool
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

// Lookup finds the guest path p (under /workspace, see GuestPath) a name
// at a time, without listing the directories on the way (see child).
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
		kid, ok, err := v.child(ctx, n, name)
		if err != nil {
			return DiskNode{}, err
		}
		if !ok {
			return DiskNode{}, errdefs.New(errdefs.ErrNotFound, "", "%s does not exist", path.Join(n.Path, name))
		}
		n = kid
	}
	return n, nil
}

// child finds the entry name of directory dir: debugfs looks it up by path
// in each of dir's layers, top first, until one hides the layers below,
// and the entries merge as readDirs merges them. No directory is listed,
// so a lookup costs the same in a directory of millions of entries. The
// path through each layer holds only directories of that layer (a layer
// is in dir.at only where it has a directory there), so no link is
// followed.
func (v *DiskView) child(ctx context.Context, dir DiskNode, name string) (DiskNode, bool, error) {
	rel := strings.TrimPrefix(path.Join(dir.Path, name), Root)
	lists := make([][]diskimg.Dirent, len(dir.at))
	info := make([]map[uint32]diskimg.Inode, len(v.layers))
	links := make([]map[uint32]string, len(v.layers))
	for slot, li := range dir.at {
		l := v.layers[li.l]
		e, st, found, err := l.img.StatPath(ctx, l.dir+rel)
		if err != nil {
			return DiskNode{}, false, fmt.Errorf("read %s: %w", path.Join(dir.Path, name), err)
		}
		if !found {
			continue
		}
		lists[slot] = []diskimg.Dirent{e}
		info[li.l] = map[uint32]diskimg.Inode{e.Ino: st}
		if e.IsLink() && st.FastLink == nil && e.Size > 0 && e.Size <= 4096 {
			b, _, err := l.img.Read(ctx, e.Ino, e.Size)
			if err != nil {
				return DiskNode{}, false, err
			}
			links[li.l] = map[uint32]string{e.Ino: string(b)}
		}
		if hides(l, e, st) {
			break
		}
	}
	kids := v.merge(dir, lists, info, links)
	if len(kids) == 0 {
		return DiskNode{}, false, nil
	}
	return kids[0], true, nil
}

// hides says whether layer l's entry e (with its stat st) hides the
// entries of the same name in the layers below: anything but a directory
// (a whiteout too), or an opaque directory of the upper layer.
func hides(l viewLayer, e diskimg.Dirent, st diskimg.Inode) bool {
	return !e.IsDir() || (l.upper && st.Opaque)
}

// ReadDir returns a directory's merged entries sorted by name.
func (v *DiskView) ReadDir(ctx context.Context, dir DiskNode) ([]DiskNode, error) {
	if dir.Type != "dir" {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, "", "%s is not a directory", dir.Path)
	}
	kids, cut, err := v.readDirs(ctx, []DiskNode{dir}, len(v.layers)*diskimg.MaxDirEntries)
	if err != nil {
		return nil, err
	}
	if cut {
		return nil, diskimg.TooManyEntries(dir.Path, diskimg.MaxDirEntries)
	}
	return kids[0], nil
}

// readDirs reads the directories dirs together: per layer one debugfs run
// lists them all, one stats what the listing cannot tell (whiteouts and
// opaque marks in the upper layer, symlink targets, times), one reads the
// targets of long symlinks. At most max entries are read from all layers
// together, so memory follows max, not the images: past it, cut is set, the
// layers below the one cut are not read (an entry shown is never one the
// layer above deletes, but some are missing), and the result is partial.
func (v *DiskView) readDirs(ctx context.Context, dirs []DiskNode, max int) (out [][]DiskNode, cut bool, err error) {
	type ref struct{ dir, slot int }
	lists := make([][][]diskimg.Dirent, len(dirs)) // [dir][slot in dir.at]
	info := make([]map[uint32]diskimg.Inode, len(v.layers))
	links := make([]map[uint32]string, len(v.layers))
	for k, d := range dirs {
		lists[k] = make([][]diskimg.Dirent, len(d.at))
	}
	for l, layer := range v.layers {
		var inos []uint32
		var refs []ref
		for k, d := range dirs {
			for slot, li := range d.at {
				if li.l == l {
					inos = append(inos, li.ino)
					refs = append(refs, ref{k, slot})
				}
			}
		}
		if len(inos) == 0 {
			continue
		}
		got, whole, err := layer.img.ListMany(ctx, inos, max)
		if err != nil {
			return nil, false, fmt.Errorf("read %s: %w", dirs[refs[0].dir].Path, err)
		}
		cut = whole < len(inos)
		var stat []uint32
		for i, r := range refs {
			lists[r.dir][r.slot] = got[i]
			max -= len(got[i])
			for _, e := range got[i] {
				if v.times || e.IsLink() || (layer.upper && (e.IsDir() || e.IsChar())) {
					stat = append(stat, e.Ino)
				}
			}
		}
		in, err := layer.img.StatMany(ctx, stat)
		if err != nil {
			return nil, false, err
		}
		info[l] = make(map[uint32]diskimg.Inode, len(stat))
		for i, ino := range stat {
			info[l][ino] = in[i]
		}
		// Long targets live in a block, not in the inode.
		var slow []diskimg.CatItem
		seen := map[uint32]bool{}
		for i := range refs {
			for _, e := range got[i] {
				if e.IsLink() && info[l][e.Ino].FastLink == nil && e.Size > 0 && e.Size <= 4096 && !seen[e.Ino] {
					seen[e.Ino] = true
					slow = append(slow, diskimg.CatItem{Ino: e.Ino, Size: e.Size})
				}
			}
		}
		links[l] = map[uint32]string{}
		err = layer.img.Cat(ctx, slow, func(i int, r io.Reader) error {
			b, err := io.ReadAll(r)
			links[l][slow[i].Ino] = string(b)
			return err
		})
		if err != nil {
			return nil, false, err
		}
		if cut {
			break
		}
	}
	out = make([][]DiskNode, len(dirs))
	for k, dir := range dirs {
		out[k] = v.merge(dir, lists[k], info, links)
	}
	return out, cut, nil
}

// merge makes directory dir's entries, sorted by name, from its layers'
// listings lists (one per slot of dir.at) with what was learnt of their
// inodes (info, and links for long symlink targets, per layer), under
// overlayfs rules.
func (v *DiskView) merge(dir DiskNode, lists [][]diskimg.Dirent, info []map[uint32]diskimg.Inode, links []map[uint32]string) []DiskNode {
	merged := map[string]*DiskNode{}
	closed := map[string]bool{} // whited out, or a non-directory / opaque directory above
	for slot, li := range dir.at {
		l := v.layers[li.l]
		for _, e := range lists[slot] {
			if closed[e.Name] {
				continue
			}
			st := info[li.l][e.Ino]
			if l.upper && e.IsChar() && st.Whiteout {
				closed[e.Name] = true
				continue
			}
			if have := merged[e.Name]; have != nil {
				if have.Type == "dir" && e.IsDir() {
					have.at = append(have.at, layerIno{li.l, e.Ino})
				}
				continue
			}
			n := &DiskNode{Path: path.Join(dir.Path, e.Name), Type: nodeType(e), Perm: e.Perm(), Mtime: st.Mtime, at: []layerIno{{li.l, e.Ino}}}
			switch {
			case e.IsReg():
				n.Size, n.ext, n.mapped = e.Size, st.Extents, st.Mapped
			case e.IsLink() && st.FastLink != nil:
				n.Link = *st.FastLink
			case e.IsLink():
				n.Link = links[li.l][e.Ino]
			}
			merged[e.Name] = n
			if hides(l, e, st) {
				closed[e.Name] = true // lower layers' entries of this name are hidden
			}
		}
	}
	kids := make([]DiskNode, 0, len(merged))
	for _, n := range merged {
		kids = append(kids, *n)
	}
	sort.Slice(kids, func(i, j int) bool { return kids[i].Path < kids[j].Path })
	return kids
}

// Walk calls fn for every node below dir, depth first in name order,
// stopping (ErrWalkLimit) after max nodes. The tree is read a level at a
// time (see readDirs); past max nodes the deeper levels are not read, so a
// truncated walk holds the shallowest entries. A level is read with room
// for what max leaves (per layer: a name counts once per layer), so the
// host holds O(max) entries however wide a level the image holds; a level
// cut there is read in part and the walk ends with ErrWalkLimit.
func (v *DiskView) Walk(ctx context.Context, dir DiskNode, max int, fn func(DiskNode) error) error {
	children := map[string][]DiskNode{}
	level, count, cut := []DiskNode{dir}, 0, false
	pathBytes := 0
	for len(level) > 0 && count <= max && !cut {
		// Each entry holds its directory's path again: a level is read
		// with room for what the bound on paths leaves at its longest.
		longest := 0
		for _, d := range level {
			if len(d.Path) > longest {
				longest = len(d.Path)
			}
		}
		room := (maxWalkPathBytes - pathBytes) / (longest + 1)
		want := len(v.layers) * (max - count + 1)
		var kids [][]DiskNode
		var err error
		kids, cut, err = v.readDirs(ctx, level, min(want, room))
		if err != nil {
			return err
		}
		if cut && room < want {
			return errWalkPaths
		}
		var next []DiskNode
		for k, d := range level {
			children[d.Path] = kids[k]
			count += len(kids[k])
			for _, c := range kids[k] {
				pathBytes += len(c.Path)
				if c.Type == "dir" {
					next = append(next, c)
				}
			}
		}
		if pathBytes > maxWalkPathBytes {
			return errWalkPaths
		}
		level = next
	}
	n := 0
	var walk func(p string) error
	walk = func(p string) error {
		for _, k := range children[p] {
			if n++; n > max {
				return ErrWalkLimit
			}
			if err := fn(k); err != nil {
				return err
			}
			if k.Type == "dir" {
				if err := walk(k.Path); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(dir.Path); err != nil || !cut {
		return err
	}
	return ErrWalkLimit
}

// ErrWalkLimit stops a Walk that reached its bound.
var ErrWalkLimit = errors.New("too many entries")

// maxWalkPathBytes bounds the bytes of the paths a Walk holds: a million
// entries (an export's bound) of 128 bytes each. A node keeps its whole
// path, as long as the levels above it: a guest's tree of hundreds of
// levels of 255-byte names with files at the bottom made each ~100 KiB,
// tens of GiB of the host's memory for a walk within the disk tools'
// budget of runs and bytes.
const maxWalkPathBytes = 128 << 20

// errWalkPaths: the walk's paths would take more than maxWalkPathBytes;
// it is the disk tools' budget error, so an export goes through the guest.
var errWalkPaths = errdefs.Wrap(errdefs.ErrFailedPrecondition, diskimg.ErrBudget, "start the workspace and use the guest tools",
	"reading the workspace image: its paths take more than %d bytes", maxWalkPathBytes)

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

// Readlink returns a symlink's target as stored ("" for other types): read
// with its directory.
func (v *DiskView) Readlink(_ context.Context, n DiskNode) (string, error) {
	return n.Link, nil
}

// DiskExportStats says what ExportDisk wrote.
type DiskExportStats struct {
	Files, Dirs, Symlinks, Skipped int
	Bytes                          int64
}

// hostFile is one file an export writes: where, with which mode, from
// which inode.
type hostFile struct {
	path string
	mode fs.FileMode
	item diskimg.CatItem
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
	var total int64
	files := map[int][]hostFile{} // by layer
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
			st.Symlinks++
			return os.Symlink(n.Link, host)
		case "file":
			mode := fs.FileMode(0o644)
			if n.Perm&0o111 != 0 {
				mode = 0o755
			}
			if n.Size > maxBytes-total {
				return errdefs.New(errdefs.ErrFailedPrecondition, "", "the image holds more than %d bytes", maxBytes)
			}
			total += n.Size
			li := n.at[0]
			files[li.l] = append(files[li.l], hostFile{host, mode, diskimg.CatItem{Ino: li.ino, Size: n.Size}})
			return nil
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
	// The content, one debugfs run per layer, into files we create.
	for l, fl := range files {
		items := make([]diskimg.CatItem, len(fl))
		for i, f := range fl {
			items[i] = f.item
		}
		err := v.layers[l].img.Cat(ctx, items, func(i int, r io.Reader) error {
			f, err := os.OpenFile(fl[i].path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fl[i].mode)
			if err != nil {
				return err
			}
			written, err := io.Copy(f, r)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			st.Bytes += written
			st.Files++
			return err
		})
		if err != nil {
			return st, err
		}
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
	if err := fsutil.Sync(img); err != nil {
		return st, err
	}
	return st, os.Rename(img, out)
}
