package workspace

import (
	"context"
	"errors"
	"fmt"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/diskimg"
)

// ListUpper lists the upper layer of a stopped workspace from its raw
// upper image on the host, as the guest's agent lists its mounted upper
// directory (agent.layerEntry): every entry under /upper with its path,
// kind, opaque mark, size, mode, times in ns and inode number; whiteouts
// (character devices 0:0) as "whiteout"; other devices, fifos and sockets
// left out. A checkpoint taken without a guest keeps this listing, and
// diff --since compares it with the guest's later ones entry by entry, so
// each field is read as the guest's stat(2) reports it (diskimg.Inode).
//
// The image is the guest's (hostile): the walk reads a directory level at
// a time, each level in one debugfs run and the inodes in one more, all
// under one diskimg.Budget; it stops at max entries (ErrTooManyListed) and
// past MaxUpperDepth levels (ErrTooDeepListed: a crafted chain of a
// thousand nested directories, a few bytes each, cost a debugfs run per
// level, ~14 s before the budget's 1,024 runs), a directory met twice (a
// crafted loop) is listed once, and any inode it cannot read whole fails
// the listing: the caller then lists through the guest. Past
// MaxUpperPathBytes of paths it stops too (ErrTooLargeListed): the paths
// are the listing's bulk, each as long as the levels above it.
func ListUpper(ctx context.Context, image string, max int) (agentapi.LayerManifest, error) {
	m := agentapi.LayerManifest{Entries: []agentapi.LayerEntry{}}
	im := diskimg.Image{Path: image, Budget: diskimg.DefaultBudget()}
	root, err := im.List(ctx, diskimg.RootIno)
	if err != nil {
		return m, fmt.Errorf("read the upper layer: %w", err)
	}
	var top uint32
	for _, e := range root {
		if e.Name == "upper" && e.IsDir() {
			top = e.Ino
		}
	}
	if top == 0 {
		return m, nil // the guest never mounted it: nothing changed
	}
	type dir struct {
		ino  uint32
		path string // relative to /upper ("" for /upper itself)
	}
	type found struct {
		path string
		d    diskimg.Dirent
	}
	var all []found
	pathBytes := 0
	seen := map[uint32]bool{top: true}
	level := []dir{{top, ""}}
	for depth := 1; len(level) > 0; depth++ {
		if depth > MaxUpperDepth {
			return m, ErrTooDeepListed
		}
		inos := make([]uint32, len(level))
		for i, d := range level {
			inos[i] = d.ino
		}
		lists, whole, err := im.ListMany(ctx, inos, max-len(all)+1)
		if err != nil {
			return m, fmt.Errorf("read the upper layer: %w", err)
		}
		if whole < len(level) {
			return m, ErrTooManyListed
		}
		var next []dir
		for i, d := range level {
			for _, e := range lists[i] {
				p := e.Name
				if d.path != "" {
					p = d.path + "/" + e.Name
				}
				all = append(all, found{p, e})
				if len(all) > max {
					return m, ErrTooManyListed
				}
				if pathBytes += len(p); pathBytes > MaxUpperPathBytes {
					return m, ErrTooLargeListed
				}
				if e.IsDir() && !seen[e.Ino] {
					seen[e.Ino] = true
					next = append(next, dir{e.Ino, p})
				}
			}
		}
		level = next
	}
	if len(all) == 0 {
		return m, nil
	}
	inos := make([]uint32, len(all))
	for i, f := range all {
		inos[i] = f.d.Ino
	}
	stats, err := im.StatMany(ctx, inos)
	if err != nil {
		return m, fmt.Errorf("read the upper layer: %w", err)
	}
	// A level at a time: parents before children, as in the agent's
	// listing (the comparisons index it by path).
	for i, f := range all {
		st := stats[i]
		if !st.Times {
			return m, fmt.Errorf("read the upper layer: inode %d of %q is unreadable", f.d.Ino, f.path)
		}
		e := agentapi.LayerEntry{Path: f.path, Size: st.Size, Mode: f.d.Mode, MtimeNS: st.MtimeNS, CtimeNS: st.CtimeNS, Ino: uint64(f.d.Ino)}
		switch {
		case f.d.IsDir():
			e.Kind, e.Opaque = "dir", st.Opaque
		case f.d.IsLink():
			e.Kind = "symlink"
		case f.d.IsReg():
			e.Kind = "file"
		case f.d.IsChar() && st.Whiteout:
			e.Kind = "whiteout"
		default:
			continue
		}
		m.Entries = append(m.Entries, e)
	}
	return m, nil
}

// MaxUpperDepth bounds the levels of directories a host listing reads
// (one debugfs run each): real trees are a few dozen deep at most.
const MaxUpperDepth = 64

// ErrTooDeepListed: the upper layer nests directories deeper than a host
// listing reads.
var ErrTooDeepListed = errors.New("the upper layer nests directories too deep to list on the host")

// ErrTooManyListed: the upper layer holds more entries than a host
// listing reads.
var ErrTooManyListed = errors.New("the upper layer holds too many entries to list on the host")

// MaxUpperPathBytes bounds the bytes of the paths a host listing holds:
// 100,000 entries (what a push lists on the host) of 670 bytes each, where
// real trees' paths take a few dozen. A guest's tree of MaxUpperDepth
// levels of 255-byte names gives each entry ~16 KiB of path: 100,000 of
// them held 1.6 GiB in the host's process (the CLI's or the MCP server's),
// from ~30 MB of image, and the checkpoint recorded as much again.
const MaxUpperPathBytes = 64 << 20

// ErrTooLargeListed: the upper layer's paths take more bytes than a host
// listing holds.
var ErrTooLargeListed = errors.New("the upper layer's paths are too long to list on the host")
