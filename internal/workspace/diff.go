package workspace

import (
	"archive/tar"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/aymanbagabas/go-udiff"

	"github.com/pyro-mcp/pyro/internal/redact"
	"github.com/pyro-mcp/pyro/internal/tarutil"
)

// Change is one path that differs from the baseline.
type Change struct {
	Path   string `json:"path"`   // relative to /workspace
	Status string `json:"status"` // "added", "modified" or "deleted"
	Kind   string `json:"kind"`   // "file", "dir" or "symlink"
	Binary bool   `json:"binary,omitempty"`
	// Diff is a unified diff for text files ("" for binary files, dirs,
	// and text files over the size limit: then Note says so).
	Diff string `json:"diff,omitempty"`
	Note string `json:"note,omitempty"`
}

// DiffResult compares two /workspace trees.
type DiffResult struct {
	Added    []string `json:"added"`
	Modified []string `json:"modified"`
	Deleted  []string `json:"deleted"`
	Changes  []Change `json:"changes"`
}

// Bounds of one diff. Both trees come from the guest (the baseline was
// pulled from it at create time), so nothing in them decides how much host
// memory a diff takes: file content is hashed as it streams by, and text
// is kept only for files that changed, up to a window per file and a
// budget per diff.
const (
	// MaxTextDiff is the largest file that gets a unified diff; a larger
	// file is reported as changed, without text.
	MaxTextDiff = 1 << 20
	// maxDiffText bounds the text held and produced by one diff (current
	// content of changed files, then the unified diffs).
	maxDiffText = 16 << 20
	// maxEntries and maxNameBytes bound the index kept of each tree.
	maxEntries   = 1 << 20
	maxNameBytes = 64 << 20
	// binarySniff is how much of a file is looked at for a NUL byte.
	binarySniff = 8000
)

// DiffOptions tune Diff.
type DiffOptions struct {
	// MaxEntryBytes refuses entries claiming more bytes (the size of the
	// workspace disk: an honest file cannot be larger). 0: no limit.
	MaxEntryBytes int64
}

// entry is what Diff keeps of one path of a tree.
type entry struct {
	kind   string // "file", "dir", "symlink"
	mode   int64
	size   int64
	sum    [32]byte
	target string
	binary bool
	seen   bool // baseline entries: present in the current tree too
}

// textual reports whether a file gets a unified diff.
func (e *entry) textual() bool { return e.kind == "file" && !e.binary && e.size <= MaxTextDiff }

// Diff compares the tar stream current against baseline, file by file. The
// baseline is read twice (an index, then the text of changed files); the
// current tree streams once. Sparse entries, entries over
// opts.MaxEntryBytes and trees over the index bounds are refused.
func Diff(baseline io.ReadSeeker, current io.Reader, opts DiffOptions) (DiffResult, error) {
	res := DiffResult{Added: []string{}, Modified: []string{}, Deleted: []string{}, Changes: []Change{}}
	budget := int64(maxDiffText)
	old := map[string]*entry{}
	var names int64
	err := walk(baseline, opts.MaxEntryBytes, func(name string, e entry, _ []byte) error {
		if err := bound(len(old), &names, name, e.target); err != nil {
			return err
		}
		if _, dup := old[name]; !dup {
			old[name] = &e
		}
		return nil
	}, nil)
	if err != nil {
		return res, fmt.Errorf("baseline: %w", err)
	}

	// pending holds the current text of changed files whose diff needs
	// the baseline's text, read in the second baseline pass.
	pending := map[string][]byte{}
	changes := map[string]*Change{}
	added := map[string]bool{}
	var addedNames int64
	err = walk(current, opts.MaxEntryBytes, func(name string, c entry, text []byte) error {
		o, inOld := old[name]
		if inOld && o.seen || added[name] {
			return fmt.Errorf("%w: %q appears twice", tarutil.ErrBadArchive, name)
		}
		if !inOld {
			if err := bound(len(added), &addedNames, name, c.target); err != nil {
				return err
			}
			added[name] = true
			ch := &Change{Path: name, Status: "added", Kind: c.kind}
			res.Added = append(res.Added, name)
			changes[name] = ch
			if describe(ch, nil, &c) {
				ch.Diff = unified(ch, "/dev/null", "b/"+name, nil, text, &budget)
			}
			return nil
		}
		o.seen = true
		if o.kind == c.kind && o.sum == c.sum && o.target == c.target && o.mode == c.mode {
			return nil
		}
		ch := &Change{Path: name, Status: "modified", Kind: c.kind}
		res.Modified = append(res.Modified, name)
		changes[name] = ch
		if describe(ch, o, &c) {
			if int64(len(text)) > budget {
				ch.Note = "diff output limit reached: no diff shown"
				return nil
			}
			budget -= int64(len(text))
			pending[name] = text
		}
		return nil
	}, func(string) bool { return true })
	if err != nil {
		return res, fmt.Errorf("current: %w", err)
	}

	// Deleted paths; those that need their old text join the second pass.
	deletedText := map[string]bool{}
	for name, o := range old {
		if o.seen {
			continue
		}
		ch := &Change{Path: name, Status: "deleted", Kind: o.kind}
		res.Deleted = append(res.Deleted, name)
		changes[name] = ch
		if describe(ch, o, nil) {
			deletedText[name] = true
		}
	}
	if len(pending) > 0 || len(deletedText) > 0 {
		if _, err := baseline.Seek(0, io.SeekStart); err != nil {
			return res, fmt.Errorf("baseline: %w", err)
		}
		wanted := func(name string) bool { _, ok := pending[name]; return ok || deletedText[name] }
		err := walk(baseline, opts.MaxEntryBytes, func(name string, _ entry, text []byte) error {
			ch := changes[name]
			if cur, ok := pending[name]; ok {
				delete(pending, name)
				budget += int64(len(cur))
				ch.Diff = unified(ch, "a/"+name, "b/"+name, text, cur, &budget)
			} else if deletedText[name] {
				delete(deletedText, name)
				ch.Diff = unified(ch, "a/"+name, "/dev/null", text, nil, &budget)
			}
			return nil
		}, wanted)
		if err != nil {
			return res, fmt.Errorf("baseline: %w", err)
		}
	}
	for name := range changes {
		res.Changes = append(res.Changes, *changes[name])
	}
	sort.Slice(res.Changes, func(i, j int) bool { return res.Changes[i].Path < res.Changes[j].Path })
	sort.Strings(res.Added)
	sort.Strings(res.Modified)
	sort.Strings(res.Deleted)
	return res, nil
}

// bound enforces the index bounds for one more entry.
func bound(n int, names *int64, name, target string) error {
	*names += int64(len(name) + len(target))
	if n >= maxEntries || *names > maxNameBytes {
		return fmt.Errorf("%w: more than %d entries or %d MiB of names", tarutil.ErrBadArchive, maxEntries, maxNameBytes>>20)
	}
	return nil
}

// describe fills the kind-level facts of a change (binary, too large, mode
// only) and reports whether it still needs a unified diff.
func describe(ch *Change, o, c *entry) bool {
	if ch.Kind != "file" {
		return false
	}
	for _, e := range []*entry{o, c} {
		if e != nil && e.kind == "file" && e.binary {
			ch.Binary = true
			ch.Note = "binary file"
			return false
		}
	}
	for _, e := range []*entry{o, c} {
		if e != nil && e.kind == "file" && !e.textual() {
			ch.Note = fmt.Sprintf("text file over %d KiB: no diff shown", MaxTextDiff>>10)
			return false
		}
	}
	if o != nil && c != nil && o.kind == c.kind && o.sum == c.sum {
		ch.Note = fmt.Sprintf("mode changed %04o -> %04o", o.mode, c.mode)
		return false
	}
	return true
}

// unified returns the diff of from and to, charged to budget.
func unified(ch *Change, fromName, toName string, from, to []byte, budget *int64) string {
	d := udiff.Unified(fromName, toName, string(from), string(to))
	if int64(len(d)) > *budget {
		ch.Note = "diff output limit reached: no diff shown"
		return ""
	}
	*budget -= int64(len(d))
	return d
}

// walk reads a tree's tar stream, calling fn for each entry with its
// content hashed and, for the names keepText wants (nil: none), its text
// when the file is textual (else nil). An entry's content is never held
// beyond MaxTextDiff bytes.
func walk(r io.Reader, maxEntry int64, fn func(name string, e entry, text []byte) error, keepText func(string) bool) error {
	tr := tarutil.NewReader(r, maxEntry)
	buf := make([]byte, 64<<10)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name, err := tarutil.CleanName(strings.TrimSuffix(h.Name, "/"))
		if err != nil {
			return err
		}
		if name == "." {
			continue
		}
		e := entry{mode: h.Mode & 0o7777, size: h.Size}
		var text []byte
		switch h.Typeflag {
		case tar.TypeDir:
			e.kind = "dir"
		case tar.TypeSymlink:
			e.kind, e.target = "symlink", h.Linkname
		case tar.TypeReg, tar.TypeRegA:
			e.kind = "file"
			if text, err = hashEntry(tr, &e, buf, keepText != nil && keepText(name)); err != nil {
				return fmt.Errorf("read %s: %w", name, err)
			}
		case tar.TypeLink:
			// A hard link's content is its target's, which was
			// hashed when the target went by.
			target, err := tarutil.CleanName(h.Linkname)
			if err != nil {
				return err
			}
			e.kind, e.target = "file", ""
			e.sum = sha256.Sum256([]byte("hardlink:" + target))
			e.binary = true
		default:
			continue
		}
		if err := fn(name, e, text); err != nil {
			return err
		}
	}
}

// hashEntry streams one file's content into e.sum, sniffs it for binary
// data and returns its text when wanted and textual.
func hashEntry(r io.Reader, e *entry, buf []byte, keepText bool) ([]byte, error) {
	h := sha256.New()
	var text []byte
	if keepText && e.size <= MaxTextDiff {
		text = make([]byte, 0, e.size)
	}
	var n int64
	for {
		k, err := r.Read(buf)
		if k > 0 {
			if n < binarySniff && strings.IndexByte(string(buf[:min(k, int(binarySniff-n))]), 0) >= 0 {
				e.binary = true
			}
			h.Write(buf[:k])
			if text != nil && !e.binary && int64(len(text))+int64(k) <= MaxTextDiff {
				text = append(text, buf[:k]...)
			}
			n += int64(k)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if n != e.size {
		return nil, fmt.Errorf("%w: %d bytes, header said %d", tarutil.ErrBadArchive, n, e.size)
	}
	copy(e.sum[:], h.Sum(nil))
	if !keepText || !e.textual() {
		return nil, nil
	}
	if text == nil {
		text = []byte{}
	}
	return text, nil
}

// Redact replaces secret values in everything of d that came from the
// guest (paths, diffs, notes).
func (d *DiffResult) Redact(r *redact.Redactor) {
	if r.Empty() {
		return
	}
	d.Added, d.Modified, d.Deleted = r.Strings(d.Added), r.Strings(d.Modified), r.Strings(d.Deleted)
	for i := range d.Changes {
		c := &d.Changes[i]
		c.Path, c.Diff, c.Note = r.String(c.Path), r.String(c.Diff), r.String(c.Note)
	}
}
