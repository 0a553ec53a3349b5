package workspace

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/diskimg"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Host-side export: the subtree is read from the workspace's images on the
// host (stopped, or frozen by the guest meanwhile) at host speed and turned
// into the same tar stream the guest agent's pull sends, which Export then
// extracts under exactly the rules it applies to the guest's stream. The
// images are guest-written, so nothing here trusts them more than that
// stream: names, modes and links are Export's to judge.

// ExportKind is the kind Export expects for node n: a directory's content,
// or one entry.
func ExportKind(n DiskNode) string {
	if n.Type == "dir" {
		return agentapi.KindDir
	}
	return agentapi.KindFile
}

// WriteTar writes n as the guest agent's pull would: for a directory every
// entry below it, named relative to it (directories end in "/"), in one
// walk bounded by maxExportEntries; for anything else one entry named after
// it. Devices, fifos and sockets are left out as the agent leaves them out.
// More than maxBytes of file content, summed from the listing before any is
// read, is refused. File content comes in one debugfs run per layer, so
// directories and links are written first and files after them.
func (v *DiskView) WriteTar(ctx context.Context, n DiskNode, w io.Writer, maxBytes int64) error {
	v.times = true
	tw := tar.NewWriter(w)
	var nodes []DiskNode
	if n.Type == "dir" {
		err := v.Walk(ctx, n, maxExportEntries, func(k DiskNode) error {
			nodes = append(nodes, k)
			return nil
		})
		if err == ErrWalkLimit {
			return errdefs.New(errdefs.ErrFailedPrecondition, "export a smaller directory", "%s holds more than %d entries", n.Path, maxExportEntries)
		}
		if err != nil {
			return err
		}
	} else {
		nodes = []DiskNode{n}
	}
	name := func(k DiskNode) string {
		if n.Type != "dir" {
			return path.Base(k.Path)
		}
		return strings.TrimPrefix(k.Path, n.Path+"/")
	}
	var total int64
	files := map[int][]DiskNode{} // by layer, in walk order
	for _, k := range nodes {
		hdr := &tar.Header{Name: name(k), Mode: int64(k.Perm), ModTime: mtime(k), Format: tar.FormatPAX}
		switch k.Type {
		case "dir":
			hdr.Typeflag, hdr.Name = tar.TypeDir, hdr.Name+"/"
		case "symlink":
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, k.Link
		case "file":
			if k.Size > maxBytes-total {
				return errdefs.New(errdefs.ErrFailedPrecondition, "export a smaller tree", "%s holds more than %d bytes", n.Path, maxBytes)
			}
			total += k.Size
			files[k.at[0].l] = append(files[k.at[0].l], k)
			continue
		default:
			continue
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
	}
	// Files whose extent map was read come straight from the image file;
	// the others through debugfs.
	buf := make([]byte, 1<<20)
	for l := range v.layers {
		var rest []DiskNode
		var img *os.File
		var bs int64
		for _, k := range files[l] {
			if !k.mapped {
				rest = append(rest, k)
				continue
			}
			if img == nil {
				var err error
				if bs, err = v.layers[l].img.BlockSize(ctx); err != nil {
					return err
				}
				if img, err = os.Open(v.layers[l].img.Path); err != nil {
					return err
				}
				defer img.Close()
			}
			hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name(k), Mode: int64(k.Perm), Size: k.Size, ModTime: mtime(k), Format: tar.FormatPAX}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if err := diskimg.ReadExtents(img, bs, k.ext, k.Size, tw, buf); err != nil {
				return err
			}
		}
		files[l] = rest
	}
	for l := range v.layers {
		fl := files[l]
		items := make([]diskimg.CatItem, len(fl))
		for i, k := range fl {
			items[i] = diskimg.CatItem{Ino: k.at[0].ino, Size: k.Size}
		}
		err := v.layers[l].img.Cat(ctx, items, func(i int, r io.Reader) error {
			k := fl[i]
			hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name(k), Mode: int64(k.Perm), Size: k.Size, ModTime: mtime(k), Format: tar.FormatPAX}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			_, err := io.Copy(tw, r)
			return err
		})
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

// mtime is a node's modification time, or now when the view has none.
func mtime(n DiskNode) time.Time {
	if n.Mtime.IsZero() {
		return time.Now()
	}
	return n.Mtime
}

// Clean reports whether the writable image needs no journal recovery: a
// guest that died mid-write leaves metadata in the journal that only the
// guest kernel replays, so a host reader would see an older or torn tree.
// A frozen or cleanly unmounted upper layer is clean.
func (v *DiskView) Clean(ctx context.Context) (bool, error) {
	for _, l := range v.layers {
		if l.upper || len(v.layers) == 1 {
			return l.img.Clean(ctx)
		}
	}
	return true, nil
}
