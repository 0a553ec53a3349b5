package diskimg

import (
	"bytes"
	"context"
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// StatPath stats the entry at the absolute path p of the image without
// listing a directory: debugfs looks each name up itself, so the host
// reads one inode's stat (at most maxStatBytes) however many entries the
// directories hold. found is false when p does not exist. p is the
// caller's, never the image's: it is quoted as one argument of a single
// -R command (no script: a newline in it cannot start a second command).
// debugfs follows symlinks in p's directories (not in its last name), so
// callers name only paths whose directories they know to be directories.
func (im Image) StatPath(ctx context.Context, p string) (d Dirent, in Inode, found bool, err error) {
	if !strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) {
		return Dirent{}, Inode{}, false, errdefs.New(errdefs.ErrInvalidArgument, "", "path %q cannot be looked up in an image", p)
	}
	out, over, stderr, err := im.run(ctx, `stat "`+strings.ReplaceAll(p, `"`, `""`)+`"`, maxStatBytes)
	if err != nil {
		return Dirent{}, Inode{}, false, err
	}
	ino, mode, size, ok := parseStatHead(out)
	if !ok {
		if len(out) == 0 && strings.Contains(stderr, "File not found by ext2_lookup") {
			return Dirent{}, Inode{}, false, nil
		}
		return Dirent{}, Inode{}, false, fmt.Errorf("debugfs stat: unexpected output %q: %s", truncate(out, 80), truncate([]byte(stderr), 200))
	}
	return Dirent{Name: path.Base(p), Ino: ino, Mode: mode, Size: size}, parseStat(out, over), true, nil
}

// statTypes maps stat's "Type:" names to the mode's type bits (other
// types are left 0: neither file, directory, link nor whiteout).
var statTypes = map[string]uint32{"regular": modeReg, "directory": modeDir, "symlink": modeLink, "character special": modeChar}

// parseStatHead reads the inode number, mode (type and permission bits)
// and size from the first lines of a stat section, all printed by
// debugfs before anything the image names (link targets, attributes):
//
//	Inode: 12   Type: regular    Mode:  0644   Flags: 0x80000
//	Generation: 0    Version: 0x00000000:00000000
//	User:     0   Group:     0   Project:     0   Size: 3
func parseStatHead(s []byte) (ino uint32, mode uint32, size int64, ok bool) {
	lines := bytes.SplitN(s, []byte("\n"), 4)
	if len(lines) < 4 || !bytes.HasPrefix(lines[0], []byte("Inode: ")) || !bytes.HasPrefix(lines[2], []byte("User: ")) {
		return 0, 0, 0, false
	}
	head := string(lines[0])
	num, rest, ok1 := strings.Cut(strings.TrimPrefix(head, "Inode: "), "Type: ")
	typ, rest, ok2 := strings.Cut(rest, "Mode: ")
	perm, _, ok3 := strings.Cut(strings.TrimSpace(rest), " ")
	_, sz, ok4 := strings.Cut(string(lines[2]), "Size: ")
	n, err1 := strconv.ParseUint(strings.TrimSpace(num), 10, 32)
	m, err2 := strconv.ParseUint(perm, 8, 32)
	z, err3 := strconv.ParseInt(strings.TrimSpace(sz), 10, 64)
	if !ok1 || !ok2 || !ok3 || !ok4 || err1 != nil || err2 != nil || err3 != nil || m > 0o7777 {
		return 0, 0, 0, false
	}
	return uint32(n), statTypes[strings.TrimSpace(typ)] | uint32(m), max(z, 0), true
}
