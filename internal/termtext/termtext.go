// Package termtext makes untrusted strings safe to print on a terminal.
// Guest-supplied text (file names, diffs, console tails, service names in
// errors) may carry escape sequences that move the cursor, rewrite earlier
// lines, set the window title or worse; human CLI output passes it through
// Clean (multi-line text) or Line (one name on one line) first. JSON output
// is escaped by the encoder and does not need this.
package termtext

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Clean removes terminal escape sequences (ESC-introduced: CSI, OSC, DCS
// and the two-byte forms; and the 8-bit C1 forms) and every other control
// character but newline and tab. Invalid UTF-8 becomes U+FFFD, so a raw
// 0x9b byte cannot act as an 8-bit CSI either.
func Clean(s string) string {
	return clean(s, false)
}

// Line is Clean for one-line values such as file names: newlines, tabs and
// the other control characters are shown as \n, \t or \xNN, and so are
// invalid UTF-8 bytes, so a name can neither fake a line of output nor
// hide what it is.
func Line(s string) string {
	return clean(s, true)
}

func clean(s string, line bool) string {
	if safe(s, line) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			if line {
				fmt.Fprintf(&b, `\x%02x`, s[i])
			} else {
				b.WriteRune(utf8.RuneError)
			}
			i++
			continue
		case r == 0x1b: // ESC
			i += escapeLen(s[i:])
			continue
		case r == 0x9b || r == 0x9d || r == 0x90 || r == 0x98 || r == 0x9e || r == 0x9f: // C1 CSI, OSC, DCS, SOS, PM, APC
			i += n + bodyLen(s[i+n:], r == 0x9b)
			continue
		case (r == '\n' || r == '\t') && !line:
			b.WriteRune(r)
		case r == '\n' && line:
			b.WriteString(`\n`)
		case r == '\t' && line:
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			if line {
				fmt.Fprintf(&b, `\x%02x`, r)
			}
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// safe reports whether s needs no change (the common case, no allocation).
func safe(s string, line bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 && (line || (c != '\n' && c != '\t')) || c == 0x7f || c >= 0x80 {
			if c >= 0x80 {
				return safeUTF8(s[i:])
			}
			return false
		}
	}
	return true
}

func safeUTF8(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return utf8.ValidString(s)
}

// escapeLen returns the length of the escape sequence at the start of s
// (s[0] is ESC), or of as much of it as s holds.
func escapeLen(s string) int {
	if len(s) < 2 {
		return len(s)
	}
	switch s[1] {
	case '[': // CSI: parameters and intermediates, then one final byte
		return 2 + bodyLen(s[2:], true)
	case ']', 'P', 'X', '^', '_': // OSC, DCS, SOS, PM, APC: up to BEL or ST
		return 2 + bodyLen(s[2:], false)
	}
	if s[1] >= 0x20 && s[1] <= 0x2f { // intermediates, then a final byte
		j := 1
		for j < len(s) && s[j] >= 0x20 && s[j] <= 0x2f {
			j++
		}
		if j < len(s) {
			j++
		}
		return j
	}
	return 2 // a two-byte sequence (ESC c, ESC 7, ...)
}

// bodyLen returns the length of a sequence body after its introducer: for
// CSI up to and including the final byte (0x40-0x7e); for string
// sequences up to and including BEL, ESC \ or the 8-bit ST (0x9c).
func bodyLen(s string, csi bool) int {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if csi {
			switch {
			case c >= 0x40 && c <= 0x7e:
				return i + 1
			case c >= 0x20 && c <= 0x3f: // parameter or intermediate byte
				continue
			}
			return i // malformed: what follows is text again
		}
		switch {
		case c == 0x07:
			return i + 1
		case c == 0x1b && i+1 < len(s) && s[i+1] == '\\':
			return i + 2
		case c == 0xc2 && i+1 < len(s) && s[i+1] == 0x9c:
			return i + 2
		}
	}
	return len(s)
}
