package agentapi

import (
	"encoding/json"
	"fmt"
)

// maxListReplyEntries bounds the entries of a listing reply before they are
// decoded. The agent sends at most MaxListEntries (then Truncated); the
// host's own cut (workspace_files.go) keeps a margin above it. Without it
// a reply of MaxListReplyBytes of "null," (null into a struct is no error)
// decoded into 1.7 M 64-byte entries (~100 MiB held, twice that
// allocated) in the MCP server at each workspace_file_list call.
const maxListReplyEntries = 2 * MaxListEntries

// UnmarshalJSON decodes a listing, bounded (maxListReplyEntries).
func (l *FileList) UnmarshalJSON(b []byte) error {
	if arrayValues(b, maxListReplyEntries) > maxListReplyEntries {
		return fmt.Errorf("the listing has more than %d entries", maxListReplyEntries)
	}
	type plain FileList
	return json.Unmarshal(b, (*plain)(l))
}

// UnmarshalJSON decodes a write result, bounded: the agent writes at most
// MaxWriteFiles files per call and names each once, so a reply of more
// entries is refused before they are built (a reply within MaxReplyBytes
// of "null," decoded into ~800 K entries, ~40 MB, at each file write or
// patch apply of the MCP server).
func (r *FileWriteResult) UnmarshalJSON(b []byte) error {
	if arrayValues(b, MaxWriteFiles) > MaxWriteFiles {
		return fmt.Errorf("the write result names more than %d files", MaxWriteFiles)
	}
	type plain FileWriteResult
	return json.Unmarshal(b, (*plain)(r))
}
