package diskimg

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pyro-mcp/pyro/internal/caplog"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/hostwrite"
)

// Budget bounds every debugfs run of one operation on a set of images (a
// listing of a tree, an export) together: how many processes start, how
// long they take in all, and how many bytes of listing and inode output
// they print. Without it a crafted upper layer with thousands of
// directories or whiteouts costs the host a debugfs process each, with no
// end. File content read with Cat is bounded by its own cap, not here. A
// nil *Budget bounds nothing beyond CallTimeout and the per-call limits.
type Budget struct {
	mu       sync.Mutex
	runs     int
	bytes    int64
	deadline time.Time
}

// Default budget of one operation (OpenDiskView makes one per view).
var (
	BudgetRuns        = 1024
	BudgetBytes int64 = 512 << 20
	BudgetTime        = 2 * time.Minute
)

// NewBudget allows runs debugfs processes printing bytes bytes in all,
// within d from now.
func NewBudget(runs int, bytes int64, d time.Duration) *Budget {
	return &Budget{runs: runs, bytes: bytes, deadline: time.Now().Add(d)}
}

// DefaultBudget is NewBudget with BudgetRuns, BudgetBytes and BudgetTime.
func DefaultBudget() *Budget { return NewBudget(BudgetRuns, BudgetBytes, BudgetTime) }

// ErrBudget is wrapped by errors of an operation that used up its Budget.
var ErrBudget = errors.New("the image costs more to read than allowed")

func budgetErr(what string) error {
	return errdefs.Wrap(errdefs.ErrFailedPrecondition, ErrBudget, "the workspace holds too many directories or deleted entries to read on the host; start it and use the guest tools",
		"reading the workspace image: %s", what)
}

// begin charges one run and returns the context it runs under (CallTimeout
// and the budget's deadline, whichever is first) and the bytes of output
// it may read (at most limit).
func (b *Budget) begin(ctx context.Context, limit int64, meter bool) (context.Context, context.CancelFunc, int64, error) {
	d := CallTimeout
	if b != nil {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.runs <= 0 {
			return nil, nil, 0, budgetErr("too many debugfs runs")
		}
		left := time.Until(b.deadline)
		if left <= 0 {
			return nil, nil, 0, budgetErr("out of time")
		}
		if meter && b.bytes <= 0 {
			return nil, nil, 0, budgetErr("too much listing output")
		}
		b.runs--
		d = min(d, left)
		if meter {
			limit = min(limit, b.bytes)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	return ctx, cancel, limit, nil
}

// spend charges n bytes of output.
func (b *Budget) spend(n int64) {
	if b != nil {
		b.mu.Lock()
		b.bytes -= n
		b.mu.Unlock()
	}
}

// spent says whether the budget's bytes are used up.
func (b *Budget) spent() bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bytes <= 0
}

// expired says whether the budget's time is up (a run killed by its
// context then reports the budget, not a damaged image).
func (b *Budget) expired() bool {
	return b != nil && !time.Now().Before(b.deadline)
}

// command returns debugfs with args and the image last. The image is the
// guest's, hostile input to debugfs's parser, so debugfs runs confined to
// reading it (hostwrite.ReadCommand: Landlock, no capabilities, seccomp,
// its own namespaces) wherever pyro can confine it; as it is on a kernel
// without Landlock or in a binary that cannot re-execute itself as the
// confined tool (a test of another package). done closes what it opened.
func (im Image) command(ctx context.Context, args ...string) (c *exec.Cmd, done func(), err error) {
	if f, err := os.Open(im.Path); err == nil {
		c, err := hostwrite.ReadCommand(ctx, f, append(args, hostwrite.ImagePath)...)
		if err == nil {
			return c, func() { f.Close() }, nil
		}
		f.Close()
		if !errors.Is(err, hostwrite.ErrUnconfinable) {
			return nil, nil, err
		}
	}
	c = exec.CommandContext(ctx, "debugfs", append(args, im.Path)...)
	c.Env = hostwrite.DebugfsEnv
	return c, func() {}, nil
}

// batch runs the commands cmds in one debugfs process (read from its
// standard input; debugfs echoes each as "debugfs: CMD" on standard output
// before its output) and hands the output, at most limit bytes of it, to
// consume. Commands only ever name inodes as <N>: no image name reaches
// them. When meter is set, the bytes read count against the budget.
func (im Image) batch(ctx context.Context, cmds []string, limit int64, meter bool, consume func(r *bufio.Reader) error) error {
	return im.batchErr(ctx, cmds, limit, meter, consume, nil)
}

// batchErr is batch that also hands back, in *stderr when it is set,
// debugfs's error output (at most maxStderr bytes of it) of a run that
// succeeded: a failed command of a script is reported there only.
func (im Image) batchErr(ctx context.Context, cmds []string, limit int64, meter bool, consume func(r *bufio.Reader) error, stderr *string) error {
	if len(cmds) == 0 {
		return nil
	}
	ctx, cancel, limit, err := im.Budget.begin(ctx, limit, meter)
	if err != nil {
		return err
	}
	defer cancel()
	c, done, err := im.command(ctx, "-c", "-f", "-")
	if err != nil {
		return err
	}
	defer done()
	errb := caplog.Head{Max: maxStderr}
	c.Stderr = &errb
	stdin, err := c.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := c.StdoutPipe()
	if err != nil {
		return err
	}
	if err := c.Start(); err != nil {
		return errdefs.Wrap(errdefs.ErrUnavailable, err, "install e2fsprogs", "run debugfs")
	}
	go func() {
		w := bufio.NewWriter(stdin)
		for _, cmd := range cmds {
			if _, err := w.WriteString(cmd + "\n"); err != nil {
				break
			}
		}
		_ = w.Flush()
		_ = stdin.Close()
	}()
	lr := &io.LimitedReader{R: stdout, N: limit + 1}
	cerr := consume(bufio.NewReaderSize(lr, 64<<10))
	used := limit + 1 - lr.N
	if meter {
		im.Budget.spend(used)
	}
	if cerr != nil || used > limit {
		_ = c.Process.Kill()
	}
	_, _ = io.Copy(io.Discard, stdout) // let it end (killed or not)
	werr := c.Wait()
	switch {
	case ctx.Err() != nil && im.Budget.expired():
		return budgetErr("out of time")
	case ctx.Err() != nil:
		return errdefs.New(errdefs.ErrUnavailable, "the image may be damaged", "reading the workspace image took longer than %s", CallTimeout)
	case used > limit:
		if meter && im.Budget != nil {
			return budgetErr("too much listing output")
		}
		return fmt.Errorf("debugfs printed more than %d bytes: %w", limit, errOverLimit)
	case cerr != nil:
		return cerr
	case werr != nil:
		return fmt.Errorf("debugfs: %w: %s", werr, errb.String())
	}
	if stderr != nil {
		*stderr = errb.String()
	}
	return nil
}

// errOverLimit: a batch printed more than its limit.
var errOverLimit = errors.New("output over its bound")

// echo is the line debugfs prints before running cmd from a script.
func echo(cmd string) string { return "debugfs: " + cmd + "\n" }

// expect reads the exact string s.
func expect(r *bufio.Reader, s string) error {
	b := make([]byte, len(s))
	if _, err := io.ReadFull(r, b); err != nil || string(b) != s {
		return fmt.Errorf("unexpected debugfs output (want %q, got %q)", strings.TrimSpace(s), truncate(b, 80))
	}
	return nil
}

// ListMany lists the directories inos in one debugfs run: the result's
// i-th slice holds inos[i]'s entries without "." and "..". An inode that is
// not a directory lists as empty. At most max entries are read in all, so
// the host keeps what its caller can hold, not what the image holds (a
// crafted directory of millions of entries): past max the run stops, and
// whole says how many directories, a prefix of inos, were listed whole;
// the next holds the part read of it, the rest nothing.
func (im Image) ListMany(ctx context.Context, inos []uint32, max int) (lists [][]Dirent, whole int, err error) {
	out := make([][]Dirent, len(inos))
	cmds := make([]string, len(inos))
	for i, ino := range inos {
		cmds[i] = fmt.Sprintf("ls -p <%d>", ino)
	}
	n := 0
	whole = len(inos)
	err = im.batch(ctx, cmds, MaxListBytes*int64(min(len(inos), 64)), true, func(r *bufio.Reader) error {
		for i := range cmds {
			if err := expect(r, echo(cmds[i])); err != nil {
				return err
			}
			for {
				b, err := r.Peek(1)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return err
				}
				if b[0] == '\n' { // ls ends with an empty line
					_, _ = r.ReadByte()
					continue
				}
				if b[0] != '/' { // the next command's echo
					break
				}
				d, ok, err := readEntry(r)
				if err != nil {
					return err
				}
				if !ok {
					continue
				}
				if n == max {
					whole = i
					return errCut
				}
				n++
				out[i] = append(out[i], d)
			}
		}
		if _, err := r.Peek(1); !errors.Is(err, io.EOF) {
			return fmt.Errorf("unexpected debugfs output after the last listing")
		}
		return nil
	})
	if errors.Is(err, errCut) {
		err = nil
	}
	return out, whole, err
}

// errCut ends a listing that reached its entry cap (the run is killed).
var errCut = errors.New("listing cut at its entry cap")

// readEntry reads one `ls -p` entry: /INO/MODE/UID/GID/NAME/SIZE/ and a
// newline. A name never holds '/' (nor NUL), so each field ends at the next
// '/' whatever it holds (newlines included); ok is false for "." and "..".
func readEntry(r *bufio.Reader) (Dirent, bool, error) {
	var f [7][]byte
	for i := range f {
		b, err := r.ReadSlice('/')
		if err != nil {
			return Dirent{}, false, fmt.Errorf("unexpected debugfs listing: %w", err)
		}
		f[i] = bytes.Clone(b[:len(b)-1])
	}
	if nl, err := r.ReadByte(); err != nil || nl != '\n' || len(f[0]) != 0 {
		return Dirent{}, false, fmt.Errorf("unexpected debugfs listing entry")
	}
	name := string(f[5])
	n, err1 := strconv.ParseUint(string(f[1]), 10, 32)
	mode, err2 := strconv.ParseUint(string(f[2]), 8, 32)
	if err1 != nil || err2 != nil {
		return Dirent{}, false, fmt.Errorf("unexpected debugfs entry for %q", truncate(f[5], 80))
	}
	if name == "." || name == ".." || name == "" {
		return Dirent{}, false, nil
	}
	size, _ := strconv.ParseInt(string(f[6]), 10, 64)
	return Dirent{Name: name, Ino: uint32(n), Mode: uint32(mode), Size: max(size, 0)}, true, nil
}

// Inode is what Stat learns of an inode.
type Inode struct {
	Whiteout bool      // a character device 0:0 (overlayfs whiteout)
	Opaque   bool      // trusted.overlay.opaque=y (overlayfs opaque directory)
	Mtime    time.Time // seconds
	// Size, MtimeNS and CtimeNS are the inode's size and times (ns since
	// the epoch, as stat(2) reports them) from the section's header lines,
	// which debugfs prints before anything the image's owner chose (xattr
	// values, link targets); Times says they were read.
	Size             int64
	MtimeNS, CtimeNS int64
	Times            bool
	FastLink         *string // a fast symlink's target (nil: not one, or not printed)
	// Extents is a file's extent map; Mapped says it was read whole
	// (else its content is read with Cat).
	Extents []Extent
	Mapped  bool
}

// maxStatBytes bounds the output of one inode's stat (its extent list may
// be long; xattrs are few).
const maxStatBytes = 256 << 10

// StatMany stats inos in one debugfs run. A section that cannot be read
// (a damaged inode) leaves its Inode zero.
func (im Image) StatMany(ctx context.Context, inos []uint32) ([]Inode, error) {
	out := make([]Inode, len(inos))
	cmds := make([]string, len(inos))
	for i, ino := range inos {
		cmds[i] = fmt.Sprintf("stat <%d>", ino)
	}
	err := im.batch(ctx, cmds, maxStatBytes*int64(len(inos)), true, func(r *bufio.Reader) error {
		// Sections run from one command's echo line to the next's, read
		// a line at a time; at most maxStatBytes of each is kept. A
		// crafted fast link target can fake an echo line: then its own
		// entries parse wrong, which only garbles what the guest exports
		// of itself.
		if err := expect(r, echo(cmds[0])); err != nil {
			return err
		}
		var sec []byte
		i, over := 0, false
		for {
			line, cut, err := readLine(r)
			if len(line) == 0 && errors.Is(err, io.EOF) {
				break
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			if i+1 < len(cmds) && string(line) == echo(cmds[i+1]) {
				out[i] = parseStat(sec, over)
				sec, i, over = sec[:0], i+1, false
				continue
			}
			if len(sec)+len(line) <= maxStatBytes && !cut {
				sec = append(sec, line...)
			} else {
				over = true
			}
		}
		out[i] = parseStat(sec, over)
		return nil
	})
	return out, err
}

// readLine reads one line of any length, keeping at most maxStatBytes of
// it (and its newline, when one came); cut says some was dropped.
func readLine(r *bufio.Reader) ([]byte, bool, error) {
	var line []byte
	cut := false
	for {
		b, err := r.ReadSlice('\n')
		if len(line)+len(b) <= maxStatBytes {
			line = append(line, b...)
		} else {
			cut = true
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return line, cut, err
	}
}

// parseStat reads one `stat` section (over: it was cut at maxStatBytes).
func parseStat(s []byte, over bool) Inode {
	var in Inode
	if !over {
		in.Extents, in.Mapped = parseExtents(s)
	}
	in.Whiteout = bytes.Contains(s, []byte("Type: character special")) && bytes.Contains(s, []byte("major/minor number: 00:00"))
	in.Opaque = bytes.Contains(s, []byte("\n  trusted.overlay.opaque (1) = \"y\"\n"))
	if i := bytes.Index(s, []byte("\n mtime: 0x")); i >= 0 {
		h := s[i+len("\n mtime: 0x"):]
		if len(h) >= 8 {
			if sec, err := strconv.ParseUint(string(h[:8]), 16, 32); err == nil {
				in.Mtime = time.Unix(int64(sec), 0)
			}
		}
	}
	var sizeOK, ctimeOK, mtimeOK bool
	in.Size, sizeOK = headSize(s)
	in.CtimeNS, ctimeOK = headTime(s, "ctime")
	in.MtimeNS, mtimeOK = headTime(s, "mtime")
	in.Times = sizeOK && ctimeOK && mtimeOK
	const mark = "Fast link dest: \""
	if i := bytes.Index(s, []byte(mark)); i >= 0 {
		t := s[i+len(mark):]
		if j := bytes.LastIndex(t, []byte("\"\n")); j >= 0 {
			t = t[:j]
		}
		l := truncate(t, maxLinkTarget)
		in.FastLink = &l
	}
	return in
}

// headSize reads the size from a stat section's "User: ... Size: N" line
// (the second line holding a "Size:" is the fragment's).
func headSize(s []byte) (int64, bool) {
	i := bytes.Index(s, []byte("\nUser: "))
	if i < 0 {
		return 0, false
	}
	line, _, _ := bytes.Cut(s[i+1:], []byte("\n"))
	_, v, ok := bytes.Cut(line, []byte(" Size: "))
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
	return n, err == nil && n >= 0
}

// headTime reads the time name ("ctime", "mtime") from a stat section as
// ext4 stores it: " name: 0xLO:EXTRA", LO the low 32 bits of the seconds
// (signed), EXTRA two more epoch bits and the nanoseconds above them; an
// inode without the extra fields prints " name: 0xLO" (no nanoseconds).
func headTime(s []byte, name string) (int64, bool) {
	mark := []byte("\n " + name + ": 0x")
	i := bytes.Index(s, mark)
	if i < 0 {
		return 0, false
	}
	h := s[i+len(mark):]
	if len(h) < 8 {
		return 0, false
	}
	lo, err := strconv.ParseUint(string(h[:8]), 16, 32)
	if err != nil {
		return 0, false
	}
	sec, nsec := int64(int32(uint32(lo))), int64(0)
	if len(h) >= 17 && h[8] == ':' {
		extra, err := strconv.ParseUint(string(h[9:17]), 16, 32)
		if err != nil {
			return 0, false
		}
		sec += int64(extra&3) << 32
		nsec = int64(extra >> 2)
		if nsec >= 1e9 {
			return 0, false
		}
	}
	return sec*1e9 + nsec, true
}

// CatItem is one inode for Cat and its size as listed.
type CatItem struct {
	Ino  uint32
	Size int64
}

// Cat streams the content of items in one debugfs run, calling fn with a
// reader of exactly items[i].Size bytes for each, in order. The image is
// read as it is: an inode whose content does not match its listed size
// (an image changed under us) ends the run with an error. The caller bounds
// the total (the sum of the sizes) before calling.
func (im Image) Cat(ctx context.Context, items []CatItem, fn func(i int, r io.Reader) error) error {
	cmds := make([]string, len(items))
	var total int64
	for i, it := range items {
		cmds[i] = fmt.Sprintf("cat <%d>", it.Ino)
		total += it.Size + int64(len(echo(cmds[i])))
	}
	err := im.batch(ctx, cmds, total, false, func(r *bufio.Reader) error {
		for i, it := range items {
			if err := expect(r, echo(cmds[i])); err != nil {
				return fmt.Errorf("the image changed while it was read: %w", err)
			}
			lr := &io.LimitedReader{R: r, N: it.Size}
			if err := fn(i, lr); err != nil {
				return err
			}
			if lr.N > 0 { // fn stopped early: skip the rest
				if _, err := io.Copy(io.Discard, lr); err != nil {
					return err
				}
				if lr.N > 0 {
					return fmt.Errorf("the image changed while it was read: inode %d is shorter than listed", it.Ino)
				}
			}
		}
		if _, err := r.Peek(1); !errors.Is(err, io.EOF) {
			return fmt.Errorf("the image changed while it was read: more content than listed")
		}
		return nil
	})
	if errors.Is(err, errOverLimit) {
		return fmt.Errorf("the image changed while it was read: more content than listed")
	}
	return err
}

// Clean reports whether the image's journal needs no recovery (no
// needs_recovery feature): what the guest wrote last is in place, not only
// in the journal, which debugfs -c does not replay.
func (im Image) Clean(ctx context.Context) (bool, error) {
	out, _, _, err := im.run(ctx, "features", 64<<10)
	if err != nil {
		return false, err
	}
	line, _, _ := bytes.Cut(out, []byte("\n"))
	feats, ok := bytes.CutPrefix(line, []byte("Filesystem features:"))
	if !ok {
		return false, fmt.Errorf("debugfs features: unexpected output %q", truncate(out, 80))
	}
	for _, f := range bytes.Fields(feats) {
		if string(f) == "needs_recovery" {
			return false, nil
		}
	}
	return true, nil
}
