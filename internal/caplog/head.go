package caplog

import "bytes"

// Head keeps the first Max bytes written to it and drops the rest, never
// failing a write: the stderr of a tool fed a guest's image, whose first
// lines say what went wrong and whose size the guest may decide.
type Head struct {
	bytes.Buffer
	Max int
}

func (h *Head) Write(p []byte) (int, error) {
	if room := h.Max - h.Len(); room > 0 {
		h.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
