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
