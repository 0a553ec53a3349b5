package workspace

import (
	"fmt"
	"io"
	"sort"

	"github.com/aymanbagabas/go-udiff"
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

// Diff compares the tar stream current against baseline, file by file.
func Diff(baseline, current io.Reader) (DiffResult, error) {
	old, err := readTree(baseline)
	if err != nil {
		return DiffResult{}, fmt.Errorf("baseline: %w", err)
	}
	cur, err := readTree(current)
	if err != nil {
		return DiffResult{}, fmt.Errorf("current: %w", err)
	}
	res := DiffResult{Added: []string{}, Modified: []string{}, Deleted: []string{}, Changes: []Change{}}
	names := map[string]bool{}
	for n := range old {
		names[n] = true
	}
	for n := range cur {
		names[n] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	for _, n := range sorted {
		o, inOld := old[n]
		c, inCur := cur[n]
		switch {
		case !inOld:
			res.Added = append(res.Added, n)
			res.Changes = append(res.Changes, change(n, "added", entry{}, c))
		case !inCur:
			res.Deleted = append(res.Deleted, n)
			res.Changes = append(res.Changes, change(n, "deleted", o, entry{}))
		case o.kind != c.kind || o.sum != c.sum || o.target != c.target || o.mode != c.mode:
			res.Modified = append(res.Modified, n)
			res.Changes = append(res.Changes, change(n, "modified", o, c))
		}
	}
	return res, nil
}

func change(name, status string, o, c entry) Change {
	kind := c.kind
	if status == "deleted" {
		kind = o.kind
	}
	ch := Change{Path: name, Status: status, Kind: kind}
	if kind != "file" {
		return ch
	}
	if o.binary || c.binary {
		ch.Binary = true
		ch.Note = "binary file"
		return ch
	}
	tooBig := (status != "added" && o.text == nil && o.size > 0) || (status != "deleted" && c.text == nil && c.size > 0)
	if tooBig {
		ch.Note = fmt.Sprintf("text file over %d KiB: no diff shown", maxTextDiff>>10)
		return ch
	}
	if o.sum == c.sum && status == "modified" {
		ch.Note = fmt.Sprintf("mode changed %04o -> %04o", o.mode, c.mode)
		return ch
	}
	from, to := "a/"+name, "b/"+name
	if status == "added" {
		from = "/dev/null"
	}
	if status == "deleted" {
		to = "/dev/null"
	}
	ch.Diff = udiff.Unified(from, to, string(o.text), string(c.text))
	return ch
}
