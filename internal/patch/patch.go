// Package patch parses unified diffs and applies them strictly: every
// context and removed line of a hunk must match the file exactly (a hunk may
// sit at another line than its header says, as with patch and git apply,
// but there is no fuzz), hunks apply in order without overlapping, and the
// first hunk that does not match fails the whole patch with an error
// naming it. Parsing and applying are pure: the caller reads the files,
// applies every file's patch in memory and writes only when all succeeded.
package patch

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Bounds of what Parse accepts.
const (
	MaxPatchBytes = 8 << 20
	MaxFiles      = 1000
)

// DevNull is the name a diff gives the missing side of a created or
// deleted file.
const DevNull = "/dev/null"

// File is one file's part of a patch.
type File struct {
	// Path is the file's name with git's a/ and b/ prefixes removed; for a
	// deleted file the old name, else the new one.
	Path   string
	Create bool // the old side is /dev/null
	Delete bool // the new side is /dev/null
	Hunks  []Hunk
}

// Hunk is one @@ section.
type Hunk struct {
	Header             string // the @@ line
	OldStart, OldLines int
	NewStart, NewLines int
	// Lines are the hunk's lines with their ' ', '-' or '+' prefix and
	// without their line ending; NoEOL marks lines followed by "\ No
	// newline at end of file".
	Lines []Line
}

// Line is one line of a hunk.
type Line struct {
	Op    byte // ' ', '-' or '+'
	Text  string
	NoEOL bool
}

// Parse reads a unified diff of one or more files. Text outside file
// sections (commit messages, "diff --git" and "index" lines) is skipped;
// renames, copies, mode changes and binary patches are refused.
func Parse(text string) ([]File, error) {
	if len(text) > MaxPatchBytes {
		return nil, invalid("patch is larger than %d bytes", MaxPatchBytes)
	}
	lines := strings.SplitAfter(text, "\n")
	var files []File
	seen := map[string]bool{}
	for i := 0; i < len(lines); {
		l := trimEOL(lines[i])
		switch {
		case strings.HasPrefix(l, "rename from ") || strings.HasPrefix(l, "copy from ") ||
			strings.HasPrefix(l, "old mode ") || strings.HasPrefix(l, "similarity index "):
			return nil, invalid("line %d: renames, copies and mode changes are not supported (%q)", i+1, l)
		case strings.HasPrefix(l, "GIT binary patch") || (strings.HasPrefix(l, "Binary files ") && strings.HasSuffix(l, " differ")):
			return nil, invalid("line %d: binary patches are not supported", i+1)
		case strings.HasPrefix(l, "--- ") && i+1 < len(lines) && strings.HasPrefix(lines[i+1], "+++ "):
			f, next, err := parseFile(lines, i)
			if err != nil {
				return nil, err
			}
			if seen[f.Path] {
				return nil, invalid("%s appears twice in the patch", f.Path)
			}
			seen[f.Path] = true
			if files = append(files, f); len(files) > MaxFiles {
				return nil, invalid("patch names more than %d files", MaxFiles)
			}
			i = next
		case strings.HasPrefix(l, "@@ "):
			return nil, invalid("line %d: hunk without a ---/+++ file header", i+1)
		default:
			i++
		}
	}
	if len(files) == 0 {
		return nil, invalid("no file sections found (hint: a unified diff has ---/+++ headers and @@ hunks)")
	}
	return files, nil
}

func invalid(format string, args ...any) error {
	return errdefs.New(errdefs.ErrInvalidArgument, "", "patch: "+format, args...)
}

func trimEOL(s string) string {
	s = strings.TrimSuffix(s, "\n")
	return strings.TrimSuffix(s, "\r")
}

// headerName returns the name of a ---/+++ line: up to a tab (which
// starts a timestamp), unquoted when git quoted it.
func headerName(l string) (string, error) {
	name := l[4:]
	if i := strings.IndexByte(name, '\t'); i >= 0 {
		name = name[:i]
	}
	if strings.HasPrefix(name, `"`) {
		u, err := strconv.Unquote(name)
		if err != nil {
			return "", invalid("bad quoted name %s", name)
		}
		name = u
	}
	if name == "" {
		return "", invalid("empty file name in %q", l)
	}
	return name, nil
}

// parseFile parses the file section starting at lines[i] ("--- ").
func parseFile(lines []string, i int) (File, int, error) {
	oldName, err := headerName(trimEOL(lines[i]))
	if err != nil {
		return File{}, 0, err
	}
	newName, err := headerName(trimEOL(lines[i+1]))
	if err != nil {
		return File{}, 0, err
	}
	f := File{Create: oldName == DevNull, Delete: newName == DevNull}
	if f.Create && f.Delete {
		return File{}, 0, invalid("line %d: both sides are %s", i+1, DevNull)
	}
	// git's a/ and b/ prefixes go when the sides carry them.
	gitStyle := (f.Create || strings.HasPrefix(oldName, "a/")) && (f.Delete || strings.HasPrefix(newName, "b/"))
	if gitStyle {
		oldName, newName = strings.TrimPrefix(oldName, "a/"), strings.TrimPrefix(newName, "b/")
	}
	switch {
	case f.Delete:
		f.Path = oldName
	case f.Create:
		f.Path = newName
	default:
		if oldName != newName {
			return File{}, 0, invalid("line %d: %s is renamed to %s; renames are not supported", i+1, oldName, newName)
		}
		f.Path = newName
	}
	i += 2
	for i < len(lines) && strings.HasPrefix(lines[i], "@@ ") {
		h, next, err := parseHunk(lines, i, f.Path, len(f.Hunks)+1)
		if err != nil {
			return File{}, 0, err
		}
		f.Hunks = append(f.Hunks, h)
		i = next
	}
	// A hunk line right after the last hunk means its header undercounts
	// (a hand-edited patch); guessing would apply something else.
	if i < len(lines) && len(f.Hunks) > 0 {
		if l := lines[i]; (strings.HasPrefix(l, "+") && !strings.HasPrefix(l, "+++ ")) ||
			(strings.HasPrefix(l, "-") && !strings.HasPrefix(l, "--- ")) || strings.HasPrefix(l, " ") {
			return File{}, 0, invalid("hunk %d of %s (%s): more lines than its header counts", len(f.Hunks), f.Path, f.Hunks[len(f.Hunks)-1].Header)
		}
	}
	if len(f.Hunks) == 0 && !f.Create {
		return File{}, 0, invalid("%s has no hunks", f.Path)
	}
	return f, i, nil
}

// parseRange parses "l,s" or "l" (s defaults to 1).
func parseRange(s string) (int, int, bool) {
	a, b, found := strings.Cut(s, ",")
	start, err := strconv.Atoi(a)
	if err != nil || start < 0 {
		return 0, 0, false
	}
	n := 1
	if found {
		if n, err = strconv.Atoi(b); err != nil || n < 0 {
			return 0, 0, false
		}
	}
	return start, n, true
}

func parseHunk(lines []string, i int, name string, num int) (Hunk, int, error) {
	header := trimEOL(lines[i])
	fields := strings.Fields(header)
	h := Hunk{Header: header}
	ok := len(fields) >= 4 && fields[3] == "@@" && strings.HasPrefix(fields[1], "-") && strings.HasPrefix(fields[2], "+")
	if ok {
		var ok1, ok2 bool
		h.OldStart, h.OldLines, ok1 = parseRange(fields[1][1:])
		h.NewStart, h.NewLines, ok2 = parseRange(fields[2][1:])
		ok = ok1 && ok2
	}
	if !ok {
		return Hunk{}, 0, invalid("hunk %d of %s: bad header %q", num, name, header)
	}
	oldLeft, newLeft := h.OldLines, h.NewLines
	i++
	for oldLeft > 0 || newLeft > 0 {
		if i >= len(lines) || lines[i] == "" {
			return Hunk{}, 0, invalid("hunk %d of %s (%s) ends early: %d old and %d new lines missing", num, name, header, oldLeft, newLeft)
		}
		raw := trimEOL(lines[i])
		op := byte(' ')
		text := ""
		if raw != "" { // an empty line is an empty context line (editors strip the space)
			op, text = raw[0], raw[1:]
		}
		switch op {
		case ' ':
			oldLeft--
			newLeft--
		case '-':
			oldLeft--
		case '+':
			newLeft--
		case '\\':
			if len(h.Lines) == 0 {
				return Hunk{}, 0, invalid("hunk %d of %s: %q before any line", num, name, raw)
			}
			h.Lines[len(h.Lines)-1].NoEOL = true
			i++
			continue
		default:
			return Hunk{}, 0, invalid("hunk %d of %s (%s): line %d %q is not context, removal or addition", num, name, header, i+1, raw)
		}
		if oldLeft < 0 || newLeft < 0 {
			return Hunk{}, 0, invalid("hunk %d of %s (%s): more lines than its header counts", num, name, header)
		}
		h.Lines = append(h.Lines, Line{Op: op, Text: text})
		i++
	}
	// A "\ No newline" marker may follow the hunk's last line.
	if i < len(lines) && strings.HasPrefix(lines[i], `\`) && len(h.Lines) > 0 {
		h.Lines[len(h.Lines)-1].NoEOL = true
		i++
	}
	return h, i, nil
}

// side returns the hunk's old (ops ' ' and '-') or new (' ' and '+')
// lines, each with its "\n" unless marked NoEOL.
func (h Hunk) side(removed byte) []string {
	var out []string
	for _, l := range h.Lines {
		if l.Op == removed {
			continue
		}
		s := l.Text
		if !l.NoEOL {
			s += "\n"
		}
		out = append(out, s)
	}
	return out
}

// splitLines splits content into lines that keep their "\n".
func splitLines(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	parts := strings.SplitAfter(string(b), "\n")
	if parts[len(parts)-1] == "" {
		parts = parts[:len(parts)-1]
	}
	return parts
}

// Apply applies f to a file's current content (exists says whether the
// file exists; a created file must not, a patched or deleted one must).
// It returns the new content; a deleted file's result is nil. Errors are
// failed_precondition and name the failing hunk.
func (f File) Apply(old []byte, exists bool) ([]byte, error) {
	switch {
	case f.Create && exists:
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, "", "patch creates %s, which already exists", f.Path)
	case !f.Create && !exists:
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, "", "patch changes %s, which does not exist", f.Path)
	}
	src := splitLines(old)
	var out []string
	pos := 0    // next unconsumed line of src
	offset := 0 // how far hunks so far sat from their headers
	for n, h := range f.Hunks {
		want := h.side('+')
		at := h.OldStart - 1 + offset
		if h.OldLines == 0 {
			at = h.OldStart + offset // insertion after line OldStart
		}
		found := find(src, want, at, pos)
		if found < 0 {
			return nil, errdefs.New(errdefs.ErrFailedPrecondition, "read the file again and regenerate the patch",
				"patch: hunk %d of %s (%s) does not apply: %s", n+1, f.Path, h.Header, mismatch(src, want, at, pos))
		}
		offset += found - at
		out = append(out, src[pos:found]...)
		out = append(out, h.side('-')...)
		pos = found + len(want)
	}
	out = append(out, src[pos:]...)
	res := []byte(strings.Join(out, ""))
	if f.Delete {
		if len(res) != 0 {
			return nil, errdefs.New(errdefs.ErrFailedPrecondition, "read the file again and regenerate the patch",
				"patch deletes %s, but lines the patch does not remove remain", f.Path)
		}
		return nil, nil
	}
	return res, nil
}

// find returns where want matches src, trying at first and then ever
// further from it in both directions, never before min; -1 if nowhere.
func find(src, want []string, at, min int) int {
	matches := func(i int) bool {
		if i < min || i+len(want) > len(src) {
			return false
		}
		for j, w := range want {
			if src[i+j] != w {
				return false
			}
		}
		return true
	}
	if at < min {
		at = min
	}
	for d := 0; at-d >= min || at+d <= len(src); d++ {
		if matches(at + d) {
			return at + d
		}
		if d > 0 && matches(at-d) {
			return at - d
		}
	}
	return -1
}

// mismatch says why want does not match src at its expected place.
func mismatch(src, want []string, at, min int) string {
	if at < min {
		at = min
	}
	for j, w := range want {
		i := at + j
		if i >= len(src) {
			return fmt.Sprintf("the file has %d lines, the hunk expects line %d to be %s", len(src), i+1, quote(w))
		}
		if src[i] != w {
			return fmt.Sprintf("line %d is %s, the hunk expects %s (and it matches nowhere else)", i+1, quote(src[i]), quote(w))
		}
	}
	return "its lines match nowhere after the previous hunk"
}

// quote shows a line with its line ending made visible, shortened.
func quote(s string) string {
	eol := strings.HasSuffix(s, "\n")
	s = strings.TrimSuffix(s, "\n")
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	q := strconv.Quote(s)
	if !eol {
		q += " (no newline at end of file)"
	}
	return q
}
