package caplog

import (
	"strings"
	"testing"
)

// A writer that sends more than Max keeps the first Max bytes, and no
// write fails (a tool writing its stderr must not die of a full buffer).
func TestHeadKeepsTheFirstBytes(t *testing.T) {
	h := &Head{Max: 10}
	for _, s := range []string{"0123", "456789abc", "def"} {
		if n, err := h.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if got := h.String(); got != "0123456789" {
		t.Fatalf("kept %q", got)
	}
	if _, err := h.Write([]byte(strings.Repeat("x", 1<<20))); err != nil || h.Len() != 10 {
		t.Fatalf("after a large write: %d bytes, %v", h.Len(), err)
	}
}
