package diskimg

import (
	"fmt"
	"testing"
)

// The head of a stat section gives the inode, type, permissions and size;
// what follows it (where the image's own text goes) does not count, and a
// section that does not start the way debugfs starts one is refused.
func TestParseStatHead(t *testing.T) {
	const head = "Inode: 12   Type: %s    Mode:  %s   Flags: 0x80000\nGeneration: 0    Version: 0x00000000:00000000\nUser:     0   Group:     0   Project:     0   Size: %s\n"
	for _, c := range []struct {
		typ, mode, size, rest string
		want                  uint32
		ok                    bool
	}{
		{"regular", "4755", "6", "", modeReg | 0o4755, true},
		{"directory", "0755", "4096", "", modeDir | 0o755, true},
		{"symlink", "0777", "11", "Fast link dest: \"Inode: 99   Type: regular\"\n", modeLink | 0o777, true},
		{"character special", "0000", "0", "", modeChar, true},
		{"FIFO", "0644", "0", "", 0o644, true},
		{"regular", "99999", "1", "", 0, false},
		{"regular", "0644", "x", "", 0, false},
	} {
		s := []byte(fmt.Sprintf(head, c.typ, c.mode, c.size) + c.rest)
		ino, mode, _, ok := parseStatHead(s)
		if ok != c.ok || (ok && (ino != 12 || mode != c.want)) {
			t.Errorf("%s %s %s: ino %d mode %o ok %v", c.typ, c.mode, c.size, ino, mode, ok)
		}
	}
	for _, s := range []string{"", "debugfs: stat x\n", "Inode: 12   Type: regular    Mode:  0644\n"} {
		if _, _, _, ok := parseStatHead([]byte(s)); ok {
			t.Errorf("%q parsed", s)
		}
	}
}
