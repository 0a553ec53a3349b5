package agentapi

import (
	"encoding/json"
	"fmt"
)

// A manifest reply may be MaxManifestBytes long, and a LayerEntry takes
// 80 bytes in memory: a guest's reply of "null," five bytes each (null
// into a struct is no error) decoded into 4.3 GiB of entries, and with
// the slice's growth a 32 MiB reply held 1.5 GiB of the host's heap
// (3 GiB allocated). The entries are counted on the raw bytes before
// anything is decoded, and a reply with more than any agent sends is
// refused.

// MaxManifestEntries bounds the entries of a manifest reply. The agent
// writes every field of an entry but the opaque flag, with nanosecond
// times, so a real entry takes 70 bytes or more and MaxManifestBytes holds
// fewer than 4 Mi of them: no honest reply is refused. What it costs the
// host at most: ~320 MiB of entries (plus their paths, within the reply's
// bytes).
const MaxManifestEntries = 1 << 22

// checkManifestEntries fails when the JSON object b has more than
// MaxManifestEntries values in the arrays directly inside it (entries and
// any other key's). It runs before the decode, without allocating; b is
// trusted to be valid JSON no more than it must be: the decode that
// follows checks that, and on valid JSON the count is never below the
// entries decoded.
func checkManifestEntries(b []byte) error {
	n := arrayValues(b, MaxManifestEntries)
	if n > MaxManifestEntries {
		return fmt.Errorf("the manifest lists more than %d entries", MaxManifestEntries)
	}
	return nil
}

// arrayValues counts (up to just past max) the values of the arrays at
// depth 2 of b, whose depth 1 is an object: a comma between two values
// of such an array counts one, and each such array one more (its first).
// Strings are skipped with their escapes.
func arrayValues(b []byte, max int) int {
	n, depth := 0, 0
	inArray := false // the container at depth 2 is an array
	for i := 0; i < len(b) && n <= max; i++ {
		switch b[i] {
		case '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
		case '{', '[':
			depth++
			if depth == 2 {
				inArray = b[i] == '['
				if inArray {
					n++
				}
			}
		case '}', ']':
			depth--
		case ',':
			if depth == 2 && inArray {
				n++
			}
		}
	}
	return n
}

// UnmarshalJSON decodes a manifest, bounded (MaxManifestEntries). A
// manifest is decoded from the guest's replies and from the host's own
// records of them alike.
func (m *LayerManifest) UnmarshalJSON(b []byte) error {
	if err := checkManifestEntries(b); err != nil {
		return err
	}
	type plain LayerManifest
	return json.Unmarshal(b, (*plain)(m))
}

// listedReply is the reply of a call that may list the upper layer
// (FreezeLayerManifest, ReleaseWorkspaceListed): Entries is nil when the
// agent sent no listing (it predates the call's listing).
type listedReply struct {
	Entries *[]LayerEntry `json:"entries"`
	// SameAs: the release of ReleaseWorkspaceSince found the guest still
	// quiet at this epoch and sent no listing (the host holds it).
	SameAs uint64 `json:"same_as,omitempty"`
}

// UnmarshalJSON decodes the reply, bounded (MaxManifestEntries).
func (r *listedReply) UnmarshalJSON(b []byte) error {
	if err := checkManifestEntries(b); err != nil {
		return err
	}
	type plain listedReply
	return json.Unmarshal(b, (*plain)(r))
}
