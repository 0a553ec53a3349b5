package mcpserver

import (
	"context"
	"fmt"
	"strings"

	"github.com/pyro-mcp/pyro"
)

// filesTools read and change single files of /workspace the way a model
// edits code: list, read, write, and apply a unified diff.
var filesTools = []tool{
	def(tool{name: "workspace_file_list", title: "List files in a workspace", hints: readOnly,
		defaults: map[string]any{"path": pyro.WorkspaceDir, "recursive": false},
		description: "List a directory under /workspace: each entry's path, type (file, dir, symlink, other), size_bytes and mode. " +
			"recursive=true lists everything below it (at most 10,000 entries; symlinks are listed, never followed)."}, workspaceFileList),
	def(tool{name: "workspace_file_read", title: "Read a file in a workspace", hints: readOnly,
		defaults: map[string]any{"max_bytes": pyro.DefaultReadMaxBytes, "base64": false},
		description: "Read a text file under /workspace (path relative to /workspace or absolute) and return its content, up to max_bytes (truncated=true when the file is longer). " +
			"A binary file is an error unless base64=true, which returns content_base64 instead. Prefer this to `cat` in workspace_exec."}, workspaceFileRead),
	def(tool{name: "workspace_file_write", title: "Write a file in a workspace", hints: destructive | idempotent,
		description: "Create or replace a file under /workspace with text (parent directories are created; the replacement is atomic). " +
			"Returns bytes_written and changed (false when the content was already that). For edits to existing files workspace_patch_apply is safer."}, workspaceFileWrite),
	def(tool{name: "workspace_patch_apply", title: "Apply a patch to a workspace", hints: destructive,
		description: "Apply a unified diff (as from `git diff` or `diff -u`; paths relative to /workspace, a/ b/ prefixes allowed; /dev/null creates or deletes a file) to /workspace, all or nothing. " +
			"Every hunk is checked against the current files first; a hunk that does not match is an error naming it and nothing is changed. Returns changed and the files touched."}, workspacePatchApply),
}

type workspaceFileListIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	Path        string `json:"path,omitempty" jsonschema:"Directory (or file) under /workspace, relative to it or absolute."`
	Recursive   bool   `json:"recursive,omitempty" jsonschema:"List everything below path, not only its direct entries."`
}

func workspaceFileList(ctx context.Context, cl *call, in workspaceFileListIn) (pyro.WorkspaceFileList, string, error) {
	l, err := cl.c.ListWorkspaceFiles(ctx, in.WorkspaceID, in.Path, in.Recursive)
	if err != nil {
		return l, "", err
	}
	return renderList(l)
}

func renderList(l pyro.WorkspaceFileList) (pyro.WorkspaceFileList, string, error) {
	var b strings.Builder
	for _, e := range l.Entries {
		fmt.Fprintf(&b, "%s %s %d %s", e.Type, e.Mode, e.SizeBytes, e.Path)
		if e.LinkTarget != "" {
			fmt.Fprintf(&b, " -> %s", e.LinkTarget)
		}
		b.WriteString("\n")
	}
	if l.Truncated {
		fmt.Fprintf(&b, "(truncated after %d entries)\n", len(l.Entries))
	}
	if len(l.Entries) == 0 {
		b.WriteString("(empty)\n")
	}
	return l, b.String(), nil
}

type workspaceFileReadIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	Path        string `json:"path" jsonschema:"File under /workspace, relative to it or absolute. Required."`
	MaxBytes    int64  `json:"max_bytes,omitempty" jsonschema:"Return at most this many bytes of the file."`
	Base64      bool   `json:"base64,omitempty" jsonschema:"Return the bytes as content_base64 (for binary files) instead of content."`
}

func workspaceFileRead(ctx context.Context, cl *call, in workspaceFileReadIn) (pyro.WorkspaceFile, string, error) {
	f, err := cl.c.ReadWorkspaceFile(ctx, in.WorkspaceID, in.Path, &pyro.ReadWorkspaceFileOptions{MaxBytes: in.MaxBytes, Base64: in.Base64})
	if err != nil {
		return f, "", err
	}
	return f, renderRead(f, in.Base64), nil
}

func renderRead(f pyro.WorkspaceFile, asBase64 bool) string {
	head := fmt.Sprintf("%s (%d bytes", f.Path, f.SizeBytes)
	if f.Truncated {
		head += fmt.Sprintf(", truncated to the first %d", f.MaxBytes)
	}
	if asBase64 {
		return head + fmt.Sprintf(", base64, binary=%v):\n%s", f.Binary, f.ContentBase64)
	}
	return head + "):\n" + f.Content
}

type workspaceFileWriteIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	Path        string `json:"path" jsonschema:"File under /workspace, relative to it or absolute. Required."`
	Text        string `json:"text" jsonschema:"The file's new content. Required (may be empty)."`
}

func workspaceFileWrite(ctx context.Context, cl *call, in workspaceFileWriteIn) (pyro.WorkspaceFileWrite, string, error) {
	r, err := cl.c.WriteWorkspaceFile(ctx, in.WorkspaceID, in.Path, in.Text)
	return r, fmt.Sprintf("wrote %s: %d bytes, changed=%v, created=%v", r.Path, r.BytesWritten, r.Changed, r.Created), err
}

type workspacePatchApplyIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	Patch       string `json:"patch" jsonschema:"The unified diff. Required."`
}

func workspacePatchApply(ctx context.Context, cl *call, in workspacePatchApplyIn) (pyro.WorkspacePatch, string, error) {
	r, err := cl.c.ApplyWorkspacePatch(ctx, in.WorkspaceID, in.Patch)
	if err != nil {
		return r, "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "patch applied, changed=%v\n", r.Changed)
	for _, f := range r.Files {
		fmt.Fprintf(&b, "%s %s (changed=%v)\n", f.Action, f.Path, f.Changed)
	}
	return r, b.String(), nil
}

// summaryTools review a workspace's session.
var summaryTools = []tool{
	def(tool{name: "workspace_summary", title: "Summarize a workspace", hints: readOnly,
		description: "Review a workspace in one call: commands run since the last reset with their exit codes, paths changed since the baseline, services and their states, snapshots, " +
			"and the file writes, patch applies, syncs and exports recorded. A stopped workspace is not booted (changes_note says so). Use it before handing work back."}, workspaceSummary),
}

func workspaceSummary(ctx context.Context, cl *call, in workspaceIDIn) (pyro.WorkspaceSummary, string, error) {
	s, err := cl.c.SummarizeWorkspace(ctx, in.WorkspaceID)
	if err != nil {
		return s, "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "workspace %s: %s; %d command(s), %d failed; %d change(s) since the baseline; %d service(s); %d snapshot(s); %d event(s)\n",
		s.WorkspaceID, s.State, s.CommandCount, s.FailedCommandCount, s.ChangeCount, len(s.Services), len(s.Snapshots), s.EventCount)
	for _, c := range s.Commands {
		fmt.Fprintf(&b, "#%d exit %d: %s\n", c.Seq, c.ExitCode, strings.Join(c.Command, " "))
	}
	for _, c := range s.Changes {
		fmt.Fprintf(&b, "%s %s\n", c.Status, c.Path)
	}
	if s.ChangesNote != "" {
		fmt.Fprintf(&b, "(%s)\n", s.ChangesNote)
	}
	for _, e := range s.Events {
		fmt.Fprintf(&b, "%s %s%s\n", e.Kind, e.Path, strings.Join(e.Paths, " "))
	}
	return s, b.String(), nil
}

// diskTools read a stopped workspace's /workspace from its disk image on
// this host, without booting it.
var diskTools = []tool{
	def(tool{name: "workspace_disk_export", title: "Export a stopped workspace's disk",
		description: "Write a STOPPED workspace's /workspace as a raw ext4 image to a host path (output_path, beneath an allowed root, must not exist), without booting it. " +
			"A running workspace is an error: stop it first."}, workspaceDiskExport),
	def(tool{name: "workspace_disk_list", title: "List a stopped workspace's files", hints: readOnly,
		defaults:    map[string]any{"path": pyro.WorkspaceDir, "recursive": false},
		description: "List a directory of a STOPPED workspace's /workspace from its disk image, without booting it (like workspace_file_list)."}, workspaceDiskList),
	def(tool{name: "workspace_disk_read", title: "Read a stopped workspace's file", hints: readOnly,
		defaults:    map[string]any{"max_bytes": pyro.DefaultReadMaxBytes, "base64": false},
		description: "Read a text file of a STOPPED workspace's /workspace from its disk image, without booting it (like workspace_file_read)."}, workspaceDiskRead),
}

type workspaceDiskExportIn struct {
	WorkspaceID string `json:"workspace_id" jsonschema:"Workspace id. Required."`
	OutputPath  string `json:"output_path" jsonschema:"Host path of the image, beneath an allowed root; must not exist. Required."`
}

func workspaceDiskExport(ctx context.Context, cl *call, in workspaceDiskExportIn) (pyro.DiskExport, string, error) {
	out, real, done, err := cl.paths.output(cl.req, "output_path", in.OutputPath)
	if err != nil {
		return pyro.DiskExport{}, "", err
	}
	defer done()
	r, err := cl.c.ExportWorkspaceDisk(ctx, in.WorkspaceID, out, nil)
	if r.OutputPath != "" {
		r.OutputPath = real // not the /proc/self/fd path the SDK wrote through
	}
	return r, fmt.Sprintf("exported /workspace to %s (ext4, %d files, %d bytes of content)", r.OutputPath, r.FileCount, r.Bytes), err
}

func workspaceDiskList(ctx context.Context, cl *call, in workspaceFileListIn) (pyro.WorkspaceFileList, string, error) {
	l, err := cl.c.ListWorkspaceDisk(ctx, in.WorkspaceID, in.Path, in.Recursive)
	if err != nil {
		return l, "", err
	}
	_, text, err := renderList(l)
	return l, text, err
}

func workspaceDiskRead(ctx context.Context, cl *call, in workspaceFileReadIn) (pyro.WorkspaceFile, string, error) {
	f, err := cl.c.ReadWorkspaceDisk(ctx, in.WorkspaceID, in.Path, &pyro.ReadWorkspaceFileOptions{MaxBytes: in.MaxBytes, Base64: in.Base64})
	if err != nil {
		return f, "", err
	}
	return f, renderRead(f, in.Base64), nil
}
