package workspace

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// BaseIndex is the baseline's entries (path -> kind), sorted for subtree
// lookups. It is written by the host from the tree it unpacked, never read
// back from the guest.
type BaseIndex struct {
	kinds map[string]string
	names []string
}

// Has returns the kind of the baseline's entry at p ("" if none).
func (b BaseIndex) Has(p string) string { return b.kinds[p] }

// under returns the baseline's entries below p.
func (b BaseIndex) under(p string) []string {
	prefix := p + "/"
	i := sort.SearchStrings(b.names, prefix)
	var out []string
	for ; i < len(b.names) && strings.HasPrefix(b.names[i], prefix); i++ {
		out = append(out, b.names[i])
	}
	return out
}

// writeBaseIndex lists tree's entries into path ("kind\tname" lines).
func writeBaseIndex(tree, path string) error {
	return replaceFileWith(path, true, func(w io.Writer) error {
		return filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
			if err != nil || p == tree {
				return err
			}
			rel, _ := filepath.Rel(tree, p)
			kind := ""
			switch {
			case d.IsDir():
				kind = "dir"
			case d.Type()&fs.ModeSymlink != 0:
				kind = "symlink"
			case d.Type().IsRegular():
				kind = "file"
			default:
				return nil
			}
			if strings.ContainsAny(rel, "\n\t") {
				return nil // such names are compared through the guest's listing only
			}
			_, err = fmt.Fprintf(w, "%s\t%s\n", kind, filepath.ToSlash(rel))
			return err
		})
	})
}

// ReadBaseIndex reads a baseline index (empty when there is none).
func ReadBaseIndex(path string) (BaseIndex, error) {
	idx := BaseIndex{kinds: map[string]string{}}
	f, err := os.Open(path)
	if err != nil {
		return idx, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		kind, name, ok := strings.Cut(sc.Text(), "\t")
		if ok {
			idx.kinds[name] = kind
			idx.names = append(idx.names, name)
		}
	}
	sort.Strings(idx.names)
	return idx, sc.Err()
}

// layerState is what one path is in overlay(baseline, upper).
type layerState struct {
	exists bool
	kind   string
	ident  string // equal idents: untouched
}

// upperIndex is a listing indexed for stateOf: its entries by path, and
// the paths whose entry hides everything below it (a whiteout, an opaque
// directory, a non-directory) as a set asked "is a prefix of p in it?" in
// time linear in p. The listing comes from the guest: hashing each prefix
// of a path anew took time quadratic in it (a path of 200,000 slashes:
// seconds each, hours for a listing of them).
type upperIndex struct {
	entries    map[string]agentapi.LayerEntry
	hides      subtrees
	hidesEmpty bool // the empty path hides (below() asks only non-empty prefixes)
}

func indexUpper(m agentapi.LayerManifest) upperIndex {
	u := upperIndex{entries: indexManifest(m)}
	for p, e := range u.entries {
		if e.Kind != "dir" || e.Opaque {
			u.hides.add(p)
			if p == "" {
				u.hidesEmpty = true
			}
		}
	}
	return u
}

func indexManifest(m agentapi.LayerManifest) map[string]agentapi.LayerEntry {
	out := make(map[string]agentapi.LayerEntry, len(m.Entries))
	for _, e := range m.Entries {
		out[e.Path] = e
	}
	return out
}

// stateOf resolves p as the overlay does: the upper entry if any, nothing
// under a whiteout, an opaque directory or a non-directory, else the
// baseline.
func stateOf(up upperIndex, base BaseIndex, p string) layerState {
	if e, ok := up.entries[p]; ok {
		if e.Kind == "whiteout" {
			return layerState{}
		}
		id := fmt.Sprintf("%s/%o", e.Kind, e.Mode)
		if e.Kind != "dir" {
			id = fmt.Sprintf("%s/%o/%d/%d/%d/%d", e.Kind, e.Mode, e.Size, e.MtimeNS, e.CtimeNS, e.Ino)
		}
		return layerState{exists: true, kind: e.Kind, ident: id}
	}
	if up.hides.below(p) || up.hidesEmpty && strings.HasPrefix(p, "/") {
		return layerState{}
	}
	if k := base.Has(p); k != "" {
		return layerState{exists: true, kind: k, ident: "base"}
	}
	return layerState{}
}

// CompareManifests names the paths whose state differs between two
// listings of the upper layer (a taken before b), over the same baseline:
// what the commands in between touched. It reports names and kinds; a
// touched file counts as modified even when its bytes came out the same.
func CompareManifests(a, b agentapi.LayerManifest, base BaseIndex) DiffResult {
	res := DiffResult{Added: []string{}, Modified: []string{}, Deleted: []string{}, Changes: []Change{}}
	ua, ub := indexUpper(a), indexUpper(b)
	cand := map[string]bool{}
	for _, m := range []upperIndex{ua, ub} {
		for p, e := range m.entries {
			cand[p] = true
			if e.Kind != "dir" || e.Opaque {
				for _, q := range base.under(p) {
					cand[q] = true
				}
			}
		}
	}
	for p := range cand {
		sa, sb := stateOf(ua, base, p), stateOf(ub, base, p)
		var ch Change
		switch {
		case !sa.exists && !sb.exists:
			continue
		case !sa.exists:
			ch = Change{Path: p, Status: "added", Kind: sb.kind}
			res.Added = append(res.Added, p)
		case !sb.exists:
			ch = Change{Path: p, Status: "deleted", Kind: sa.kind}
			res.Deleted = append(res.Deleted, p)
		case sa.ident != sb.ident || sa.kind != sb.kind:
			if sa.kind == "dir" && sb.kind == "dir" && (sa.ident == "base" || sb.ident == "base") {
				continue // a directory copied up, not changed
			}
			ch = Change{Path: p, Status: "modified", Kind: sb.kind}
			res.Modified = append(res.Modified, p)
		default:
			continue
		}
		res.Changes = append(res.Changes, ch)
	}
	sort.Slice(res.Changes, func(i, j int) bool { return res.Changes[i].Path < res.Changes[j].Path })
	sort.Strings(res.Added)
	sort.Strings(res.Modified)
	sort.Strings(res.Deleted)
	return res
}

// touchedBytes sums the sizes, in b, of the files d added or modified.
func touchedBytes(d DiffResult, b agentapi.LayerManifest) int64 {
	ub := indexManifest(b)
	var n int64
	for _, p := range append(append([]string{}, d.Added...), d.Modified...) {
		if e, ok := ub[p]; ok && e.Kind == "file" {
			n += e.Size
		}
	}
	return n
}
