package pyro

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"unicode/utf8"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/instance"
	"github.com/pyro-mcp/pyro/internal/patch"
	"github.com/pyro-mcp/pyro/internal/redact"
	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// Files as a model uses them: list, read and write single files of
// /workspace, and apply unified diffs. Every path is confined to
// /workspace (relative paths are taken from it; a symlink leading out is
// refused in the guest); every reply from the guest is bounded on the host.

// MaxReadBytes is the largest max bytes of one read.
const MaxReadBytes = agentapi.MaxReadBytes

// MaxWriteBytes bounds the content of one write or patch apply.
const MaxWriteBytes = agentapi.MaxWriteBytes

// WorkspaceFileEntry is one entry of a listing.
type WorkspaceFileEntry struct {
	Path string `json:"path"`
	// Type is "file", "dir", "symlink" or "other".
	Type      string `json:"type"`
	SizeBytes int64  `json:"size_bytes"`
	// Mode is the permission bits in octal ("0644").
	Mode       string `json:"mode"`
	LinkTarget string `json:"link_target,omitempty"`
}

// WorkspaceFileList is a directory's entries (all descendants when
// recursive; symlinks are listed, never followed), or a file's one entry.
type WorkspaceFileList struct {
	WorkspaceID string               `json:"workspace_id"`
	Path        string               `json:"path"`
	Recursive   bool                 `json:"recursive"`
	Entries     []WorkspaceFileEntry `json:"entries"`
	// Truncated: more than 10,000 entries; the first ones are listed.
	Truncated bool `json:"truncated"`
}

// ListWorkspaceFiles lists path (default /workspace).
func (c *Client) ListWorkspaceFiles(ctx context.Context, id, path string, recursive bool) (WorkspaceFileList, error) {
	dir, rec, guest, err := c.wsFilePath(id, path)
	if err != nil {
		return WorkspaceFileList{}, err
	}
	agent, err := c.workspaceAgent(ctx, dir, rec)
	if err != nil {
		return WorkspaceFileList{}, err
	}
	defer agent.Close()
	l, err := agent.ListFiles(ctx, guest, workspace.Root, recursive)
	if err != nil {
		return WorkspaceFileList{}, err
	}
	out := WorkspaceFileList{WorkspaceID: rec.ID, Path: guest, Recursive: recursive, Entries: make([]WorkspaceFileEntry, 0, len(l.Entries)),
		Truncated: l.Truncated || len(l.Entries) > agentapi.MaxListEntries}
	for i, e := range l.Entries {
		if i == agentapi.MaxListEntries {
			break
		}
		out.Entries = append(out.Entries, entryFrom(e))
	}
	return out, nil
}

// entryFrom copies a guest entry, normalising what the guest chose.
func entryFrom(e agentapi.FileEntry) WorkspaceFileEntry {
	switch e.Type {
	case agentapi.FileTypeFile, agentapi.FileTypeDir, agentapi.FileTypeSymlink:
	default:
		e.Type = agentapi.FileTypeOther
	}
	if e.SizeBytes < 0 {
		e.SizeBytes = 0
	}
	return WorkspaceFileEntry{Path: e.Path, Type: e.Type, SizeBytes: e.SizeBytes, Mode: fmt.Sprintf("%04o", fs.FileMode(e.Mode).Perm()), LinkTarget: e.LinkTarget}
}

// ReadWorkspaceFileOptions tune ReadWorkspaceFile.
type ReadWorkspaceFileOptions struct {
	// MaxBytes (1..MaxReadBytes, default DefaultReadMaxBytes) bounds the
	// bytes returned.
	MaxBytes int64
	// Base64 returns the bytes as ContentBase64, for binary files.
	Base64 bool
}

// WorkspaceFile is a file's content. Text (UTF-8 without NUL bytes) is in
// Content; with Base64 the bytes are in ContentBase64 instead, and Binary
// says whether they are text.
type WorkspaceFile struct {
	WorkspaceID   string `json:"workspace_id"`
	Path          string `json:"path"`
	SizeBytes     int64  `json:"size_bytes"`
	MaxBytes      int64  `json:"max_bytes"`
	Content       string `json:"content"`
	ContentBase64 string `json:"content_base64,omitempty"`
	Binary        bool   `json:"binary"`
	// Truncated: the file is longer than MaxBytes (a cut UTF-8 character
	// at the end is left out of Content).
	Truncated bool `json:"truncated"`
}

// ReadWorkspaceFile returns up to MaxBytes of a regular file. A directory
// or a binary file read as text is invalid_argument (the error says what
// to do instead); the workspace's secret values are redacted.
func (c *Client) ReadWorkspaceFile(ctx context.Context, id, path string, opts *ReadWorkspaceFileOptions) (WorkspaceFile, error) {
	var o ReadWorkspaceFileOptions
	if opts != nil {
		o = *opts
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultReadMaxBytes
	}
	if o.MaxBytes < 1 || o.MaxBytes > MaxReadBytes {
		return WorkspaceFile{}, errdefs.New(errdefs.ErrInvalidArgument, fmt.Sprintf("use 1..%d", MaxReadBytes), "max bytes %d out of range", o.MaxBytes)
	}
	dir, rec, guest, err := c.wsFilePath(id, path)
	if err != nil {
		return WorkspaceFile{}, err
	}
	agent, err := c.workspaceAgent(ctx, dir, rec)
	if err != nil {
		return WorkspaceFile{}, err
	}
	defer agent.Close()
	fc, err := agent.ReadFile(ctx, guest, workspace.Root, o.MaxBytes)
	red := instance.Redactor(dir)
	if err != nil {
		return WorkspaceFile{}, red.Error(err)
	}
	res := WorkspaceFile{WorkspaceID: rec.ID, Path: guest, SizeBytes: max(fc.SizeBytes, int64(len(fc.Content))), MaxBytes: o.MaxBytes, Truncated: fc.Truncated}
	return res, fillContent(&res, fc.Content, o.Base64, red)
}

// fillContent sets a read's content: text, or base64 when asked; binary
// content read as text is invalid_argument.
func fillContent(res *WorkspaceFile, content []byte, asBase64 bool, red *redact.Redactor) error {
	text := content
	if res.Truncated {
		text = trimCutRune(text)
	}
	res.Binary = !isText(text)
	switch {
	case asBase64:
		res.ContentBase64 = base64.StdEncoding.EncodeToString(red.Bytes(content))
	case res.Binary:
		return errdefs.New(errdefs.ErrInvalidArgument,
			"read it with base64 (--base64, base64=true), or copy it out with `pyro workspace export`",
			"%s is binary (%d bytes), not UTF-8 text", res.Path, res.SizeBytes)
	default:
		res.Content = red.String(string(text))
	}
	return nil
}

// isText reports whether b is UTF-8 without NUL bytes.
func isText(b []byte) bool {
	for _, c := range b {
		if c == 0 {
			return false
		}
	}
	return utf8.Valid(b)
}

// trimCutRune drops an incomplete UTF-8 sequence a truncation left at the
// end of b.
func trimCutRune(b []byte) []byte {
	for i := 1; i <= utf8.UTFMax-1 && i <= len(b); i++ {
		c := b[len(b)-i]
		if c < utf8.RuneSelf {
			return b // ASCII: nothing cut
		}
		if utf8.RuneStart(c) {
			if !utf8.FullRune(b[len(b)-i:]) {
				return b[:len(b)-i]
			}
			return b
		}
	}
	return b
}

// WorkspaceFileWrite says what a write did.
type WorkspaceFileWrite struct {
	WorkspaceID  string `json:"workspace_id"`
	Path         string `json:"path"`
	BytesWritten int64  `json:"bytes_written"`
	// Changed: the content differs from what was there; Created: the file
	// did not exist (parent directories are created too).
	Changed bool `json:"changed"`
	Created bool `json:"created"`
}

// WriteWorkspaceFile replaces a file's content with text (creating it and
// its parent directories), atomically: a reader sees the old or the new
// content, never a mix. An existing file keeps its mode; a new one is 0644.
func (c *Client) WriteWorkspaceFile(ctx context.Context, id, path, text string) (WorkspaceFileWrite, error) {
	if len(text) > MaxWriteBytes {
		return WorkspaceFileWrite{}, errdefs.New(errdefs.ErrInvalidArgument, "use `pyro workspace sync push` for large files", "content is larger than %d bytes", MaxWriteBytes)
	}
	dir, rec, guest, err := c.wsFilePath(id, path)
	if err != nil {
		return WorkspaceFileWrite{}, err
	}
	if guest == workspace.Root {
		return WorkspaceFileWrite{}, errdefs.New(errdefs.ErrInvalidArgument, "name a file under /workspace", "%s is a directory", guest)
	}
	agent, err := c.workspaceAgent(ctx, dir, rec)
	if err != nil {
		return WorkspaceFileWrite{}, err
	}
	defer agent.Close()
	if err := c.checkpoint(ctx, dir, rec, agent, "file write "+guest); err != nil {
		return WorkspaceFileWrite{}, err
	}
	res, err := agent.WriteFiles(ctx, agentapi.FileWriteRequest{Within: workspace.Root, Files: []agentapi.FileWrite{{Path: guest, Content: []byte(text)}}})
	if err != nil {
		return WorkspaceFileWrite{}, instance.Redactor(dir).Error(err)
	}
	if len(res.Files) != 1 {
		return WorkspaceFileWrite{}, errdefs.New(errdefs.ErrUnavailable, "", "agent answered a write of one file with %d results", len(res.Files))
	}
	f := res.Files[0]
	c.recordEvent(dir, workspace.Event{Kind: workspace.EventFileWrite, Path: guest, Bytes: int64(len(text))})
	return WorkspaceFileWrite{WorkspaceID: rec.ID, Path: guest, BytesWritten: int64(len(text)), Changed: f.Changed, Created: f.Created}, nil
}

// PatchedFile is what a patch did to one file.
type PatchedFile struct {
	Path string `json:"path"`
	// Action is "create", "modify" or "delete".
	Action       string `json:"action"`
	Changed      bool   `json:"changed"`
	BytesWritten int64  `json:"bytes_written"`
}

// WorkspacePatch says what ApplyWorkspacePatch did.
type WorkspacePatch struct {
	WorkspaceID string        `json:"workspace_id"`
	Changed     bool          `json:"changed"`
	FileCount   int           `json:"file_count"`
	Files       []PatchedFile `json:"files"`
}

// ApplyWorkspacePatch applies a unified diff (as from `git diff` or `diff
// -u`; paths relative to /workspace, a/ and b/ prefixes allowed) to
// /workspace, all or nothing: the patch is parsed and every hunk is checked
// against the current files on the host before anything is written, and
// the write is refused if a file changed meanwhile. A patch that does not
// apply is failed_precondition naming the hunk; a malformed one, or one
// naming a path outside /workspace, is invalid_argument.
func (c *Client) ApplyWorkspacePatch(ctx context.Context, id, patchText string) (WorkspacePatch, error) {
	files, err := patch.Parse(patchText)
	if err != nil {
		return WorkspacePatch{}, err
	}
	dir, rec, err := c.wsDir(id)
	if err != nil {
		return WorkspacePatch{}, err
	}
	guests := make([]string, len(files))
	for i, f := range files {
		if guests[i], err = workspace.GuestPath(f.Path); err != nil {
			return WorkspacePatch{}, err
		}
		if guests[i] == workspace.Root {
			return WorkspacePatch{}, errdefs.New(errdefs.ErrInvalidArgument, "", "patch names /workspace itself")
		}
	}
	agent, err := c.workspaceAgent(ctx, dir, rec)
	if err != nil {
		return WorkspacePatch{}, err
	}
	defer agent.Close()
	red := instance.Redactor(dir)
	req := agentapi.FileWriteRequest{Within: workspace.Root}
	out := WorkspacePatch{WorkspaceID: rec.ID, FileCount: len(files), Files: make([]PatchedFile, 0, len(files))}
	var total int64
	for i, f := range files {
		old, exists, err := readWhole(ctx, agent, guests[i])
		if err != nil {
			return WorkspacePatch{}, red.Error(err)
		}
		// Error messages quote lines of the file: redact them.
		next, err := f.Apply(old, exists)
		if err != nil {
			return WorkspacePatch{}, red.Error(err)
		}
		expect := ""
		if exists {
			sum := sha256.Sum256(old)
			expect = hex.EncodeToString(sum[:])
		}
		w := agentapi.FileWrite{Path: guests[i], Content: next, Delete: f.Delete, ExpectSHA256: &expect}
		if total += int64(len(next)); total > MaxWriteBytes {
			return WorkspacePatch{}, errdefs.New(errdefs.ErrInvalidArgument, "split the patch", "patched files are larger than %d bytes together", MaxWriteBytes)
		}
		req.Files = append(req.Files, w)
		action := "modify"
		switch {
		case f.Create:
			action = "create"
		case f.Delete:
			action = "delete"
		}
		out.Files = append(out.Files, PatchedFile{Path: guests[i], Action: action, BytesWritten: int64(len(next))})
	}
	if err := c.checkpoint(ctx, dir, rec, agent, fmt.Sprintf("patch apply (%d files)", len(files))); err != nil {
		return WorkspacePatch{}, err
	}
	res, err := agent.WriteFiles(ctx, req)
	if err != nil {
		return WorkspacePatch{}, red.Error(err)
	}
	if len(res.Files) != len(out.Files) {
		return WorkspacePatch{}, errdefs.New(errdefs.ErrUnavailable, "", "agent answered a write of %d files with %d results", len(out.Files), len(res.Files))
	}
	for i := range out.Files {
		out.Files[i].Changed = res.Files[i].Changed
		out.Changed = out.Changed || res.Files[i].Changed
	}
	c.recordEvent(dir, workspace.Event{Kind: workspace.EventPatchApply, Paths: guests, Count: len(guests), Bytes: total})
	return out, nil
}

// readWhole reads a whole file for patching: (nil, false) when it does not
// exist; a file larger than a read may return is refused.
func readWhole(ctx context.Context, agent *agentapi.Client, guest string) ([]byte, bool, error) {
	fc, err := agent.ReadFile(ctx, guest, workspace.Root, MaxReadBytes)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if fc.Truncated {
		return nil, false, errdefs.New(errdefs.ErrInvalidArgument, "edit it with a command instead", "%s is larger than %d bytes, too large to patch", guest, MaxReadBytes)
	}
	return fc.Content, true, nil
}

// wsFilePath opens a workspace and resolves a path under /workspace.
func (c *Client) wsFilePath(id, path string) (vmdir.Dir, instance.Record, string, error) {
	guest, err := workspace.GuestPath(path)
	if err != nil {
		return "", instance.Record{}, "", err
	}
	dir, rec, err := c.wsDir(id)
	return dir, rec, guest, err
}

// recordEvent appends to the workspace's events log for the summary; a
// failure only thins the summary, so it is not the caller's error.
func (c *Client) recordEvent(dir vmdir.Dir, e workspace.Event) {
	_ = workspace.AppendEvent(dir.Path(workspace.EventsFile), e)
}
