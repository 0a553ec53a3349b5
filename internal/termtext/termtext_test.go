package termtext

import "testing"

func TestClean(t *testing.T) {
	for _, c := range []struct{ in, clean, line string }{
		{"plain name.txt", "plain name.txt", "plain name.txt"},
		{"héllo wörld", "héllo wörld", "héllo wörld"},
		{"a\nb\tc", "a\nb\tc", `a\nb\tc`},
		{"red\x1b[31mtext\x1b[0m", "redtext", "redtext"},
		{"up\x1b[2Aover", "upover", "upover"},
		{"title\x1b]0;pwned\x07end", "titleend", "titleend"},
		{"title\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "titlelink", "titlelink"},
		{"dcs\x1bPq#0;2;0;0;0\x1b\\x", "dcsx", "dcsx"},
		{"c1\u009b31mred", "c1red", "c1red"},
		{"osc8bit\u009d0;t\u009cok", "osc8bitok", "osc8bitok"},
		{"raw\x9b31m", "raw\ufffd31m", `raw\x9b31m`},
		{"cr\roverwrite", "croverwrite", `cr\x0doverwrite`},
		{"bell\x07del\x7f", "belldel", `bell\x07del\x7f`},
		{"reset\x1bcx", "resetx", "resetx"},
		{"charset\x1b(Bx", "charsetx", "charsetx"},
		{"cut\x1b[", "cut", "cut"},
		{"cut\x1b", "cut", "cut"},
		{"bad\x1b[1\nnext", "bad\nnext", `bad\nnext`},
	} {
		if got := Clean(c.in); got != c.clean {
			t.Errorf("Clean(%q) = %q, want %q", c.in, got, c.clean)
		}
		if got := Line(c.in); got != c.line {
			t.Errorf("Line(%q) = %q, want %q", c.in, got, c.line)
		}
	}
}

func FuzzClean(f *testing.F) {
	f.Add("a\x1b[31mb\x1b]0;t\x07\u009b1m\x9b\r\n")
	f.Fuzz(func(t *testing.T, s string) {
		for _, out := range []string{Clean(s), Line(s)} {
			for _, r := range out {
				if r == 0x1b || (r < 0x20 && r != '\n' && r != '\t') || r == 0x7f || (r >= 0x80 && r < 0xa0) {
					t.Fatalf("%q -> %q still holds control %U", s, out, r)
				}
			}
		}
		for _, r := range Line(s) {
			if r == '\n' || r == '\t' {
				t.Fatalf("Line(%q) holds a line break or tab", s)
			}
		}
	})
}
