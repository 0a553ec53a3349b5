package termtext

import "testing"

func TestPlain(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"hello\r\n", "hello\n"},
		{"\x1b[1;32mgreen\x1b[0m text", "green text"},
		{"50%\r100%\n", "100%\n"},
		{"abc\rX\n", "Xbc\n"},
		{"ab\bc", "ac"},
		{"\b\bx", "x"},
		{"a\x07b\x00c", "abc"},
		{"\x1b]0;title\x07$ ls\r\n", "$ ls\n"},
		{"tab\there", "tab\there"},
		{"bad\xffbyte", "bad\ufffdbyte"},
		{"\u009b31mred", "red"},
		{"\x9b31m", "\ufffd31m"},
		{"root@pyro:/workspace# \x1b[?2004l\rexit\r\n", "exit@pyro:/workspace# \n"},
		{"", ""},
	} {
		if got := Plain(c.in); got != c.want {
			t.Errorf("Plain(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func FuzzPlain(f *testing.F) {
	f.Add("a\r\nb\x1b[0m\bc")
	f.Fuzz(func(t *testing.T, s string) {
		p := Plain(s)
		if len([]rune(p)) > len([]rune(s)) {
			t.Fatalf("Plain grew %q to %q", s, p)
		}
		for _, r := range p {
			if r == 0x1b || r == '\r' || r == '\b' {
				t.Fatalf("Plain(%q) kept control %q", s, r)
			}
		}
	})
}
