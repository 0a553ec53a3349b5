package termtext

import (
	"strings"
	"unicode/utf8"
)

// Plain renders terminal output the way a person would read it on the
// screen, for a model reading a shell in chat: escape sequences (colours,
// cursor movement, titles) are removed; a carriage return goes back to the
// start of the line and later characters overwrite it (progress bars,
// "\r\n" line ends); a backspace moves back one character (so "ab\bc" is
// "ac"); tabs and newlines stay; every other control character is dropped.
// Invalid UTF-8 becomes U+FFFD. Each line is bounded by the input, so the
// output is never longer than the input in characters.
func Plain(s string) string {
	var out strings.Builder
	out.Grow(len(s))
	var line []rune
	col := 0
	put := func(r rune) {
		if col < len(line) {
			line[col] = r
		} else {
			line = append(line, r)
		}
		col++
	}
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			put(utf8.RuneError)
		case r == 0x1b:
			i += escapeLen(s[i:])
			continue
		case r == 0x9b || r == 0x9d || r == 0x90 || r == 0x98 || r == 0x9e || r == 0x9f:
			i += n + bodyLen(s[i+n:], r == 0x9b)
			continue
		case r == '\n':
			out.WriteString(string(line))
			out.WriteByte('\n')
			line, col = line[:0], 0
		case r == '\r':
			col = 0
		case r == '\b':
			if col > 0 {
				col--
			}
		case r == '\t':
			put('\t')
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			// other controls (bell, shift-in/out...) show nothing
		default:
			put(r)
		}
		i += n
	}
	out.WriteString(string(line))
	return out.String()
}
