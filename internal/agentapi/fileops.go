package agentapi

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
)

// File operations a model uses on single files (beside the tar push/pull of
// whole trees):
//
//	GET  /v1/files/list?path=ABS&recursive=BOOL&within=DIR  -> FileList
//	GET  /v1/files/read?path=ABS&max_bytes=N&within=DIR     -> FileContent
//	POST /v1/files/write  FileWriteRequest                   -> FileWriteResult
//
// within, when set, is a directory every named path must resolve into
// (symlinks followed), as for push and pull. List does not follow symlinks
// below the listed path; read follows them (confined). Write is
// all-or-nothing as far as one filesystem allows: every precondition
// (expected content digests, confinement, types) is checked and every new
// content is written to a temporary file beside its target before the
// first rename; a failure before the renames changes nothing.
const (
	PathFilesList  = "/v1/files/list"
	PathFilesRead  = "/v1/files/read"
	PathFilesWrite = "/v1/files/write"
)

// Bounds of the file operations. The host enforces them on replies (the
// guest chooses what it sends); the agent enforces them on requests.
const (
	// MaxListEntries caps a listing; more entries set FileList.Truncated.
	MaxListEntries = 10_000
	// MaxListReplyBytes bounds a listing reply (entries carry names up to
	// 4 KiB, but 10,000 typical ones fit easily).
	MaxListReplyBytes = 8 << 20
	// MaxReadBytes is the largest max_bytes of one read.
	MaxReadBytes = 4 << 20
	// MaxWriteBytes bounds the total content of one write request.
	MaxWriteBytes = 8 << 20
	// MaxWriteFiles bounds the files of one write request.
	MaxWriteFiles = 1000
)

// File types of a FileEntry.
const (
	FileTypeFile    = "file"
	FileTypeDir     = "dir"
	FileTypeSymlink = "symlink"
	FileTypeOther   = "other"
)

// FileEntry is one entry of a listing.
type FileEntry struct {
	// Path is absolute (in the guest).
	Path      string `json:"path"`
	Type      string `json:"type"`
	SizeBytes int64  `json:"size_bytes"`
	Mode      uint32 `json:"mode"` // permission bits only
	// LinkTarget is a symlink's target, as stored.
	LinkTarget string `json:"link_target,omitempty"`
}

// FileList is the reply of a listing: the entries of a directory (all
// descendants when recursive) sorted by path, or the one entry of a
// non-directory path.
type FileList struct {
	Path      string      `json:"path"`
	Entries   []FileEntry `json:"entries"`
	Truncated bool        `json:"truncated"`
}

// FileContent is the reply of a read: up to max_bytes of a regular file.
type FileContent struct {
	Path      string `json:"path"`
	SizeBytes int64  `json:"size_bytes"`
	// Content is the first bytes of the file (base64 on the wire).
	Content   []byte `json:"content"`
	Truncated bool   `json:"truncated"`
}

// FileWrite is one file of a write request.
type FileWrite struct {
	Path    string `json:"path"`
	Content []byte `json:"content,omitempty"`
	// Delete removes the file instead of writing it.
	Delete bool `json:"delete,omitempty"`
	// Mode of a created file (permission bits); 0 means 0644. An existing
	// file keeps its mode.
	Mode uint32 `json:"mode,omitempty"`
	// ExpectSHA256, when not nil, is the hex SHA-256 the current content
	// must have, or "" when the file must not exist: a patch computed from
	// what the host read is never applied over a concurrent change.
	ExpectSHA256 *string `json:"expect_sha256,omitempty"`
}

// FileWriteRequest writes or deletes files.
type FileWriteRequest struct {
	Within string      `json:"within,omitempty"`
	Files  []FileWrite `json:"files"`
}

// FileWritten is what a write did to one file.
type FileWritten struct {
	Path         string `json:"path"`
	BytesWritten int64  `json:"bytes_written"`
	// Changed: the content differs from what was there (a new or deleted
	// file is a change).
	Changed bool `json:"changed"`
	Created bool `json:"created,omitempty"`
	Deleted bool `json:"deleted,omitempty"`
}

// FileWriteResult is the reply of a write, in request order.
type FileWriteResult struct {
	Files []FileWritten `json:"files"`
}

// ListFiles lists path (absolute); see FileList.
func (c *Client) ListFiles(ctx context.Context, path, within string, recursive bool) (FileList, error) {
	q := url.Values{"path": {path}, "within": {within}, "recursive": {strconv.FormatBool(recursive)}}
	var l FileList
	err := c.jsonCallLimit(ctx, callTimeout, MaxListReplyBytes, http.MethodGet, PathFilesList+"?"+q.Encode(), nil, &l)
	return l, err
}

// ReadFile returns up to maxBytes (1..MaxReadBytes) of a regular file. The
// reply is bounded by what maxBytes allows, whatever the guest sends.
func (c *Client) ReadFile(ctx context.Context, path, within string, maxBytes int64) (FileContent, error) {
	q := url.Values{"path": {path}, "within": {within}, "max_bytes": {strconv.FormatInt(maxBytes, 10)}}
	var fc FileContent
	limit := maxBytes/3*4 + 4 + 64<<10 // base64 of the content plus the envelope
	err := c.jsonCallLimit(ctx, callTimeout, limit, http.MethodGet, PathFilesRead+"?"+q.Encode(), nil, &fc)
	if err == nil && int64(len(fc.Content)) > maxBytes {
		fc.Content, fc.Truncated = fc.Content[:maxBytes], true
	}
	return fc, err
}

// WriteFiles writes and deletes files all-or-nothing (see the top of this
// file).
func (c *Client) WriteFiles(ctx context.Context, req FileWriteRequest) (FileWriteResult, error) {
	var res FileWriteResult
	err := c.jsonCall(ctx, transferWindow, http.MethodPost, PathFilesWrite, req, &res)
	return res, err
}
