package diskimg

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
)

// Probe is what one debugfs run learns of an image before a host push
// writes into a copy of it (pyro's workspace_hostpush.go): whether its
// journal needs replaying, its geometry and free space, where its journal
// lies, and whether each of a few paths exists. Each confined debugfs run
// costs a re-executed pyro and a debugfs (~35 ms on a quiet 2-core host),
// so a push asks everything at once instead of one run per question.
type Probe struct {
	Clean      bool  // no needs_recovery: what the guest wrote is in place
	BlockSize  int64 // bytes
	FreeBlocks int64
	FreeInodes int64
	// Journal is the internal journal inode's extent map (nil when there
	// is none, or it did not parse). The image is the guest's: a caller
	// that trusts it with anything but the guest's own data checks it.
	Journal []Extent
	// Paths holds, for each path asked, whether it exists and its entry.
	Paths []PathStat
}

// PathStat is one asked path's answer: found (with its entry), absent
// (debugfs said "File not found"), or unknown (Err: a directory of it is
// not one, or the image is damaged there).
type PathStat struct {
	Found bool
	Err   error
	Dirent
}

// maxProbePaths bounds the paths of one Probe (a script line each).
const maxProbePaths = 1 << 12

// ErrUnprobable: a path cannot be asked of debugfs as one script argument
// (a quote, backslash or control character), or there are too many.
var ErrUnprobable = errors.New("path cannot be probed")

// Probe asks the image, in one debugfs run, for its header, its journal
// inode's map and the stat of each absolute path in paths. Paths are the
// caller's, never the image's; debugfs follows symlinks in their
// directories, so a caller reads a path's answer only once it knows the
// path's directories to be directories (as StatPath). A path whose stat
// printed nothing counts as absent only when debugfs said so ("File not
// found by ext2_lookup"); else its answer is an error. The output read is
// bounded (one stat section each for the header's journal and the first
// few paths, echoes for the rest: a path that exists ends most callers'
// questions), and so is the run (Budget, CallTimeout).
func (im Image) Probe(ctx context.Context, paths []string) (Probe, error) {
	var pr Probe
	if len(paths) > maxProbePaths {
		return pr, fmt.Errorf("%w: %d paths", ErrUnprobable, len(paths))
	}
	cmds := []string{"stats -h", "stat <8>"}
	limit := int64(64<<10) + 2*maxStatBytes
	for _, p := range paths {
		if !strings.HasPrefix(p, "/") {
			return pr, fmt.Errorf("%w: %q", ErrUnprobable, p)
		}
		for _, r := range p {
			if r < 0x20 || r == 0x7f || r == '"' || r == '\\' {
				return pr, fmt.Errorf("%w: %q", ErrUnprobable, p)
			}
		}
		cmds = append(cmds, `stat "`+p+`"`)
		limit += int64(len(echo(cmds[len(cmds)-1])))
	}
	limit += maxStatBytes * int64(min(len(paths), 8))
	secs := make([][]byte, len(cmds))
	var stderr string
	err := im.batchErr(ctx, cmds, limit, true, func(r *bufio.Reader) error {
		if err := expect(r, echo(cmds[0])); err != nil {
			return err
		}
		i := 0
		for {
			line, cut, err := readLine(r)
			if len(line) == 0 && errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			if i+1 < len(cmds) && string(line) == echo(cmds[i+1]) {
				i++
				continue
			}
			if cut || len(secs[i])+len(line) > maxStatBytes {
				return fmt.Errorf("debugfs %s: output over %d bytes", strings.Fields(cmds[i])[0], maxStatBytes)
			}
			secs[i] = append(secs[i], line...)
		}
	}, &stderr)
	if err != nil {
		return pr, err
	}
	if err := pr.header(secs[0]); err != nil {
		return pr, err
	}
	if ext, ok := parseExtents(secs[1]); ok && pr.journalIno(secs[0]) == 8 {
		pr.Journal = ext
	}
	notFound := map[string]bool{}
	for _, l := range strings.Split(stderr, "\n") {
		if p, ok := strings.CutSuffix(strings.TrimSpace(l), ": File not found by ext2_lookup"); ok {
			notFound[p] = true
		}
	}
	pr.Paths = make([]PathStat, len(paths))
	for i, p := range paths {
		sec := secs[i+2]
		if len(sec) == 0 {
			if !notFound[p] {
				pr.Paths[i].Err = fmt.Errorf("debugfs stat %q: no answer: %s", p, truncate([]byte(stderr), 200))
			}
			continue
		}
		ino, mode, size, ok := parseStatHead(sec)
		if !ok {
			return pr, fmt.Errorf("debugfs stat: unexpected output %q", truncate(sec, 80))
		}
		pr.Paths[i] = PathStat{Found: true, Dirent: Dirent{Name: path.Base(p), Ino: ino, Mode: mode, Size: size}}
	}
	return pr, nil
}

// header reads `stats -h`: features, block size, free blocks and inodes.
func (pr *Probe) header(s []byte) error {
	// The header prints a few of the image's strings raw (volume name,
	// last mount point, mount options, error functions): a field is read
	// only when exactly one line starts with its name, so such a string
	// cannot stand in for it.
	nl := append([]byte("\n"), s...)
	field := func(name string) (string, bool) {
		key := []byte("\n" + name + ":")
		i := bytes.Index(nl, key)
		if i < 0 || bytes.Count(nl, key) != 1 {
			return "", false
		}
		line, _, _ := bytes.Cut(nl[i+len(name)+2:], []byte("\n"))
		return strings.TrimSpace(string(line)), true
	}
	feats, ok := field("Filesystem features")
	if !ok {
		return fmt.Errorf("debugfs stats: no features in %q", truncate(s, 80))
	}
	pr.Clean = !strings.Contains(" "+feats+" ", " needs_recovery ")
	num := func(name string) (int64, error) {
		v, ok := field(name)
		if !ok {
			return 0, fmt.Errorf("debugfs stats: no %s", strings.ToLower(name))
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("debugfs stats: %s %q", strings.ToLower(name), v)
		}
		return n, nil
	}
	var err error
	if pr.BlockSize, err = num("Block size"); err != nil {
		return err
	}
	if bs := pr.BlockSize; bs < 1024 || bs > 65536 || bs&(bs-1) != 0 {
		return fmt.Errorf("debugfs stats: block size %d", bs)
	}
	if pr.FreeBlocks, err = num("Free blocks"); err != nil {
		return err
	}
	if pr.FreeInodes, err = num("Free inodes"); err != nil {
		return err
	}
	return nil
}

// journalIno is the header's journal inode (0: none, or not read; see
// header about fields).
func (pr *Probe) journalIno(s []byte) int {
	key := []byte("\nJournal inode:")
	i := bytes.Index(s, key)
	if i < 0 || bytes.Count(s, key) != 1 {
		return 0
	}
	line, _, _ := bytes.Cut(s[i+len("\nJournal inode:"):], []byte("\n"))
	n, _ := strconv.Atoi(strings.TrimSpace(string(line)))
	return n
}

// JournalBody returns the byte ranges of the image holding the body of
// the probed journal (every block but its superblock, the first), when
// the journal superblock (read from img) says the journal is empty
// (s_start 0: nothing to replay, so nothing reads the body before it is
// written again); nil otherwise. The map is the guest's: a range that
// lies about where the journal is only leaves a hole in the guest's own
// copy of its disk.
func (pr Probe) JournalBody(img *os.File) ([][2]int64, error) {
	if !pr.Clean || len(pr.Journal) == 0 || pr.BlockSize == 0 {
		return nil, nil
	}
	bs := pr.BlockSize
	var sb *Extent
	for i, e := range pr.Journal {
		if e.Logical == 0 && !e.Unwritten {
			sb = &pr.Journal[i]
		}
	}
	if sb == nil {
		return nil, nil
	}
	// journal_superblock_t: h_magic, h_blocktype (3: v1, 4: v2), ...,
	// s_start at 28, all big-endian.
	var h [32]byte
	if _, err := img.ReadAt(h[:], int64(sb.Physical)*bs); err != nil {
		return nil, nil // a map past the image's end: copy it all
	}
	be := binary.BigEndian
	if be.Uint32(h[0:]) != 0xc03b3998 || (be.Uint32(h[4:]) != 3 && be.Uint32(h[4:]) != 4) || be.Uint32(h[28:]) != 0 {
		return nil, nil
	}
	var out [][2]int64
	for _, e := range pr.Journal {
		off, n := int64(e.Physical)*bs, int64(e.Len)*bs
		if e.Logical == 0 {
			off, n = off+bs, n-bs
		}
		if n > 0 {
			out = append(out, [2]int64{off, n})
		}
	}
	return out, nil
}
