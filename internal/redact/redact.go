// Package redact hides secret values in text and byte streams: command
// output, shell reads, service logs, errors. It matches each secret raw and
// in the forms it commonly takes on the way out of a program: base64 (std
// and URL alphabets, padded and raw, and the inner characters it has when
// embedded at any byte offset of a longer base64 string), hex (lower and
// upper case), URL query and path escaping, and JSON string escaping.
//
// Matching is leftmost, then longest: at each position the longest pattern
// that matches there is replaced by Marker, and scanning resumes after it.
// A Stream gives exactly the same output as String for the concatenation
// of its writes, whatever the chunking.
package redact

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/url"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"
)

// Marker replaces every match.
const Marker = "[REDACTED]"

// MinEncodedLen is the shortest encoded form matched: shorter encodings of
// a secret are too likely to occur by chance. A secret's raw value is
// matched whatever its length.
const MinEncodedLen = 8

// Redactor replaces secret values. It is immutable and safe for concurrent
// use; a nil *Redactor redacts nothing.
type Redactor struct {
	patterns [][]byte
	byFirst  [256][][]byte // patterns by first byte, longest first
	first    [256]bool
	maxLen   int
}

// New returns a Redactor for the given secret values. Empty values are
// ignored; duplicates are harmless.
func New(secrets []string) *Redactor {
	set := map[string]bool{}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		set[s] = true
		for _, v := range encodings(s) {
			if len(v) >= MinEncodedLen {
				set[v] = true
			}
		}
	}
	r := &Redactor{}
	for p := range set {
		r.patterns = append(r.patterns, []byte(p))
	}
	sort.Slice(r.patterns, func(i, j int) bool {
		a, b := r.patterns[i], r.patterns[j]
		if len(a) != len(b) {
			return len(a) > len(b)
		}
		return bytes.Compare(a, b) < 0
	})
	for _, p := range r.patterns {
		r.byFirst[p[0]] = append(r.byFirst[p[0]], p)
		r.first[p[0]] = true
		r.maxLen = max(r.maxLen, len(p))
	}
	return r
}

// encodings lists the encoded forms of s (before the length filter).
func encodings(s string) []string {
	b := []byte(s)
	out := []string{
		base64.StdEncoding.EncodeToString(b),
		base64.RawStdEncoding.EncodeToString(b),
		base64.URLEncoding.EncodeToString(b),
		base64.RawURLEncoding.EncodeToString(b),
		hex.EncodeToString(b),
		strings.ToUpper(hex.EncodeToString(b)),
		url.QueryEscape(s),
		url.PathEscape(s),
	}
	// Inside a longer base64 string the secret starts at byte offset 0, 1
	// or 2 of a 3-byte group; only the characters whose 6 bits all come
	// from the secret are the same whatever surrounds it.
	n := len(b)
	for k := 0; k < 3; k++ {
		data := append(make([]byte, k, k+n), b...)
		lo := (8*k + 5) / 6
		hi := 8 * (k + n) / 6 // exclusive
		if hi <= lo {
			continue
		}
		for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
			out = append(out, enc.EncodeToString(data)[lo:hi])
		}
	}
	// JSON string escaping (without the quotes), with and without HTML
	// escaping; only for valid UTF-8, which JSON keeps intact.
	var buf bytes.Buffer
	for _, html := range []bool{false, true} {
		if !utf8.ValidString(s) {
			break
		}
		buf.Reset()
		e := json.NewEncoder(&buf)
		e.SetEscapeHTML(html)
		if e.Encode(s) == nil {
			j := strings.TrimSuffix(buf.String(), "\n")
			out = append(out, j[1:len(j)-1])
		}
	}
	return out
}

// Empty reports whether r redacts nothing (no secrets): callers can skip
// it entirely.
func (r *Redactor) Empty() bool { return r == nil || len(r.patterns) == 0 }

// MaxPatternLen is the length of the longest pattern; a Stream holds back
// at most MaxPatternLen-1 bytes.
func (r *Redactor) MaxPatternLen() int {
	if r == nil {
		return 0
	}
	return r.maxLen
}

// String returns s with every secret and encoded form replaced by Marker.
func (r *Redactor) String(s string) string {
	if r.Empty() {
		return s
	}
	out, _ := r.redact(nil, []byte(s), true)
	return string(out)
}

// Bytes is String for a byte slice; it returns a new slice (or b itself
// when r is empty).
func (r *Redactor) Bytes(b []byte) []byte {
	if r.Empty() {
		return b
	}
	out, _ := r.redact(nil, b, true)
	return out
}

// Strings redacts each element into a new slice.
func (r *Redactor) Strings(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = r.String(s)
	}
	return out
}

// Error returns err with a redacted message; errors.Is and errors.As still
// see err through Unwrap. It returns err itself when r is empty or the
// message has nothing to hide, and nil for nil.
func (r *Redactor) Error(err error) error {
	if err == nil || r.Empty() {
		return err
	}
	msg := err.Error()
	red := r.String(msg)
	if red == msg {
		return err
	}
	return &redactedError{msg: red, err: err}
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redact appends the redaction of b to out. Unless final, it stops at the
// first position where a match may depend on bytes not seen yet and
// returns how much of b it consumed; the rest (shorter than maxLen) must be
// presented again with more data.
func (r *Redactor) redact(out, b []byte, final bool) ([]byte, int) {
	i := 0
	for i < len(b) {
		// Copy the run of bytes no pattern starts with.
		j := i
		for j < len(b) && !r.first[b[j]] {
			j++
		}
		out = append(out, b[i:j]...)
		i = j
		if i == len(b) {
			break
		}
		n, pending := r.matchAt(b[i:], final)
		if pending {
			return out, i
		}
		if n > 0 {
			out = append(out, Marker...)
			i += n
		} else {
			out = append(out, b[i])
			i++
		}
	}
	return out, i
}

// matchAt returns the length of the longest pattern b starts with, or
// pending when a longer pattern than any match could still match once more
// bytes arrive.
func (r *Redactor) matchAt(b []byte, final bool) (n int, pending bool) {
	for _, p := range r.byFirst[b[0]] {
		if len(p) <= len(b) {
			if bytes.Equal(p, b[:len(p)]) {
				return len(p), false
			}
			continue
		}
		if !final && bytes.HasPrefix(p, b) {
			return 0, true
		}
	}
	return 0, false
}

// Stream redacts a byte stream written in arbitrary chunks. It never emits
// a secret that spans two writes: it holds back the tail that could still
// start a match (at most MaxPatternLen-1 bytes) until more data or Flush.
// A Stream is not safe for concurrent use.
type Stream struct {
	r   *Redactor
	buf []byte
}

// Stream returns a new Stream.
func (r *Redactor) Stream() *Stream { return &Stream{r: r} }

// Write takes the next chunk and returns the redacted output that is now
// final (possibly empty). The returned slice is newly allocated.
func (s *Stream) Write(p []byte) []byte {
	if s.r.Empty() {
		return append([]byte(nil), p...)
	}
	var in []byte
	if len(s.buf) == 0 {
		in = p
	} else {
		in = append(s.buf, p...)
	}
	out, n := s.r.redact(make([]byte, 0, len(in)+len(Marker)), in, false)
	s.buf = append(s.buf[:0:0], in[n:]...)
	return out
}

// Flush returns the redaction of the held-back tail, treating it as the
// end of the stream. The Stream can be reused afterwards.
func (s *Stream) Flush() []byte {
	if len(s.buf) == 0 {
		return nil
	}
	out, _ := s.r.redact(nil, s.buf, true)
	s.buf = nil
	return out
}

// Pending is the number of bytes held back.
func (s *Stream) Pending() int { return len(s.buf) }

// Writer returns a writer that redacts what is written to it and writes
// the result to w. Close flushes the held-back tail; it does not close w.
// The writer is safe for concurrent use. Write reports len(p) on success,
// since output length differs from input length.
func (r *Redactor) Writer(w io.Writer) io.WriteCloser {
	return &writer{s: r.Stream(), w: w}
}

type writer struct {
	mu sync.Mutex
	s  *Stream
	w  io.Writer
}

func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.s.Write(p)
	if len(out) > 0 {
		if _, err := w.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (w *writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if out := w.s.Flush(); len(out) > 0 {
		_, err := w.w.Write(out)
		return err
	}
	return nil
}
