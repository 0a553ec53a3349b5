package agent

import (
	"encoding/binary"
	"errors"
	"os"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/agentapi"
)

// An incremental quiet listing: after a writing exec the quiet report
// says what changed in the upper layer since the listing the host holds,
// instead of walking and encoding the whole layer (under TCG ~70 ms for
// 1,000 files: readdir and lstat of every entry, then the encoding).
//
// Two fanotify groups name what may have changed, in the kernel, as it
// happens (no walk at all):
//   - the upper disk's file system (an FID group, FAN_MARK_FILESYSTEM):
//     every create, delete, rename and attribute change the overlay makes
//     in the upper directory (copy-ups, whiteouts, chmod, truncate,
//     opaque marks), reported as the parent directory's handle and a name;
//   - the overlay's file system (a classic group): every file written
//     through /workspace (FAN_MODIFY; FAN_CLOSE_WRITE also for writes
//     through a shared mapping, whose writer closed the file at the
//     latest when it exited, and a quiet report needs no user process
//     left). Under this kernel (6.1) the overlay's writes to its upper
//     files are reported on the overlay's inodes only, hence this group.
//
// The report lstats only those paths (each resolved without following a
// symlink, as the walk would see it) and re-walks only a directory new at
// its path. Anything the tracker cannot account for (a queue overflow, a
// handle it cannot resolve, a written file outside /workspace, a mark the
// kernel dropped because the upper disk was unmounted, more than
// maxDirtyPaths paths) makes the next report a full listing again, which
// also starts the tracking afresh. A guest that lies here only makes its
// own checkpoints' listings (diff --since) wrong: the host never reads
// data through them, and undo restores whole layers.

// maxDirtyPaths bounds the paths a report re-reads; past it the report
// is a full listing.
const maxDirtyPaths = 8192

type upperTracker struct {
	upper  string // the overlay's upper directory on the upper disk
	merged string // the overlay's mount (/workspace)
	fid    int    // FID group on the upper disk
	cl     int    // fd group on the overlay
	// view is the listing last reported (at epoch), exact while lost is
	// false: every change since is named in dirty or still queued.
	view      map[string]agentapi.LayerEntry
	viewBytes int
	epoch     uint64
	dirty     map[string]struct{}
	lost      bool
	why       string // what made it lost
}

// newUpperTracker marks both file systems; nothing is tracked until reset
// gives it the listing to start from.
func newUpperTracker(upper, merged string) (*upperTracker, error) {
	t := &upperTracker{upper: path.Clean(upper), merged: path.Clean(merged), fid: -1, cl: -1}
	var err error
	t.fid, err = unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_REPORT_DFID_NAME|unix.FAN_REPORT_FID|unix.FAN_NONBLOCK|unix.FAN_CLOEXEC, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	const names = unix.FAN_CREATE | unix.FAN_DELETE | unix.FAN_MOVED_FROM | unix.FAN_MOVED_TO | unix.FAN_ATTRIB |
		unix.FAN_MODIFY | unix.FAN_CLOSE_WRITE | unix.FAN_DELETE_SELF | unix.FAN_MOVE_SELF | unix.FAN_ONDIR
	if err = unix.FanotifyMark(t.fid, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, names, unix.AT_FDCWD, t.upper); err == nil {
		t.cl, err = unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_NONBLOCK|unix.FAN_CLOEXEC, unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	}
	if err == nil {
		err = unix.FanotifyMark(t.cl, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, unix.FAN_MODIFY|unix.FAN_CLOSE_WRITE, unix.AT_FDCWD, t.merged)
	}
	if err != nil {
		t.close()
		return nil, err
	}
	t.lose("not started") // until reset
	return t, nil
}

func (t *upperTracker) close() {
	if t.fid >= 0 {
		unix.Close(t.fid)
	}
	if t.cl >= 0 {
		unix.Close(t.cl)
	}
	t.fid, t.cl = -1, -1
}

// marked reports whether both groups still hold their file system mark:
// the kernel drops a mark when its file system is unmounted, and a
// remounted upper disk (written meanwhile by anyone) is not tracked.
func (t *upperTracker) marked() bool {
	for _, fd := range []int{t.fid, t.cl} {
		b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
		if err != nil || !strings.Contains(string(b), "fanotify sdev:") {
			return false
		}
	}
	return true
}

// reset starts tracking from a full listing reported at epoch, dropping
// what the queues hold (the listing is of the state after it).
func (t *upperTracker) reset(epoch uint64, m []agentapi.LayerEntry) {
	t.drain()
	t.view = make(map[string]agentapi.LayerEntry, len(m))
	t.viewBytes = 0
	for _, e := range m {
		t.view[e.Path] = e
		t.viewBytes += len(e.Path) + manifestEntryBytes
	}
	t.epoch, t.dirty, t.lost, t.why = epoch, nil, false, ""
}

// usable reports whether a delta against the listing of epoch have can
// be made: that is the listing the tracker holds, nothing was lost, and
// the marks hold.
func (t *upperTracker) usable(have uint64) bool {
	if t.lost || have == 0 || have != t.epoch {
		return false
	}
	t.drain()
	return !t.lost && t.marked()
}

// lose makes the next report a full listing; why is kept for the log.
func (t *upperTracker) lose(why string) {
	if !t.lost {
		t.why = why
	}
	t.lost = true
}

// markDirty names p, and its parent: an entry made or removed changes its
// directory's times, and the kernel names the entry, not the directory.
func (t *upperTracker) markDirty(p string) {
	if t.dirty == nil {
		t.dirty = map[string]struct{}{}
	}
	for _, q := range []string{p, path.Dir(p)} {
		if _, ok := t.dirty[q]; ok || q == "." || q == "/" || q == "" {
			continue
		}
		if len(t.dirty) >= maxDirtyPaths {
			t.lose("too many paths")
			return
		}
		t.dirty[q] = struct{}{}
	}
}

// drain moves what both queues hold into dirty.
func (t *upperTracker) drain() {
	if t.fid < 0 {
		t.lose("not marked")
		return
	}
	t.drainNames()
	t.drainWritten()
}

const fanMetaLen = 24 // struct fanotify_event_metadata

// drainNames reads the FID group: each event names a parent directory
// (by handle) and an entry in it.
func (t *upperTracker) drainNames() {
	// open_by_handle_at refuses an O_PATH descriptor as the mount.
	mount, err := unix.Open(t.upper, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.lose("open upper")
		return
	}
	defer unix.Close(mount)
	dirs := map[string]string{} // handle -> path relative to upper ("-": not in it)
	buf := make([]byte, 16<<10)
	for {
		n, err := unix.Read(t.fid, buf)
		if err != nil || n <= 0 {
			if !errors.Is(err, unix.EAGAIN) {
				t.lose("read names")
			}
			return
		}
		for off := 0; off+fanMetaLen <= n; {
			ev := buf[off:n]
			l := int(binary.LittleEndian.Uint32(ev))
			ml := int(binary.LittleEndian.Uint16(ev[6:]))
			mask := binary.LittleEndian.Uint64(ev[8:])
			if l < fanMetaLen || l > len(ev) || ml < fanMetaLen || ml > l || ev[4] != unix.FANOTIFY_METADATA_VERSION {
				t.lose("bad event")
				return
			}
			off += l
			if mask&unix.FAN_Q_OVERFLOW != 0 {
				t.lose("queue overflow")
				continue
			}
			t.nameEvent(mount, dirs, ev[ml:l])
		}
	}
}

// nameEvent marks the entry an FID event names: the directory's handle
// and an entry name, or (when the kernel has no name to give, e.g. the
// link count of a file another name was made for) the object's handle.
func (t *upperTracker) nameEvent(mount int, dirs map[string]string, info []byte) {
	var obj []byte
	named := false
	for len(info) >= 4 {
		typ, il := info[0], int(binary.LittleEndian.Uint16(info[2:]))
		if il < 4 || il > len(info) {
			t.lose("bad info record")
			return
		}
		rec := info[:il]
		info = info[il:]
		switch typ {
		case unix.FAN_EVENT_INFO_TYPE_FID:
			obj = rec
			continue
		case unix.FAN_EVENT_INFO_TYPE_DFID_NAME, unix.FAN_EVENT_INFO_TYPE_DFID:
		default:
			continue
		}
		dir, name, ok := t.handleOf(mount, dirs, rec)
		if !ok {
			return
		}
		named = true
		if typ == unix.FAN_EVENT_INFO_TYPE_DFID {
			name = "."
		}
		t.markIn(dir, name)
	}
	if named {
		return
	}
	if obj == nil {
		t.lose("no record")
		return
	}
	if p, _, ok := t.handleOf(mount, dirs, obj); ok {
		t.markIn(p, ".")
	}
}

// markIn marks entry name of the directory dir (relative to the upper
// directory; "-": not in it, nothing to mark).
func (t *upperTracker) markIn(dir, name string) {
	switch {
	case dir == "-":
	case name == "." || name == "":
		if dir != "" { // the upper directory itself is no entry
			t.markDirty(dir)
		}
	case strings.Contains(name, "/"):
		t.lose("slash in name")
	case dir == "":
		t.markDirty(name)
	default:
		t.markDirty(dir + "/" + name)
	}
}

// handleOf resolves an info record's handle (cached in dirs) and returns
// the name after it (DFID_NAME records); ok is false when the record is
// malformed (the tracker is then lost).
func (t *upperTracker) handleOf(mount int, dirs map[string]string, rec []byte) (rel, name string, ok bool) {
	// header (4), fsid (8), handle_bytes (4), handle_type (4), handle, name
	if len(rec) < 20 {
		t.lose("short record")
		return "", "", false
	}
	hb := int(binary.LittleEndian.Uint32(rec[12:]))
	if hb > len(rec)-20 {
		t.lose("bad handle")
		return "", "", false
	}
	key := string(rec[16 : 20+hb])
	rel, cached := dirs[key]
	if !cached {
		rel = t.resolve(mount, int32(binary.LittleEndian.Uint32(rec[16:])), rec[20:20+hb])
		dirs[key] = rel
	}
	name = string(rec[20+hb:])
	if i := strings.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	return rel, name, true
}

// resolve returns the path relative to the upper directory of what a
// handle names, or "-" when it is gone (a deleted entry's removal is an
// event of its parent) or in the overlay's work directory. Anything else
// it cannot place loses the tracking.
func (t *upperTracker) resolve(mount int, typ int32, handle []byte) string {
	fd, err := unix.OpenByHandleAt(mount, unix.NewFileHandle(typ, append([]byte(nil), handle...)), unix.O_PATH|unix.O_CLOEXEC)
	if errors.Is(err, unix.ESTALE) || errors.Is(err, unix.ENOENT) {
		return "-"
	}
	if err != nil {
		t.lose("handle: " + err.Error())
		return "-"
	}
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	unix.Close(fd)
	if err != nil {
		t.lose("readlink handle")
		return "-"
	}
	work := path.Dir(t.upper) + "/work"
	if strings.HasSuffix(p, " (deleted)") || p == work || strings.HasPrefix(p, work+"/") {
		return "-"
	}
	if p == t.upper {
		return ""
	}
	if rel, ok := strings.CutPrefix(p, t.upper+"/"); ok {
		return rel
	}
	t.lose("handle outside the upper directory: " + p)
	return "-"
}

// drainWritten reads the fd group: each event is a file written through
// the overlay, opened for us; its path says which.
func (t *upperTracker) drainWritten() {
	buf := make([]byte, 4<<10) // each event holds an open file until read
	for {
		n, err := unix.Read(t.cl, buf)
		if err != nil || n <= 0 {
			if !errors.Is(err, unix.EAGAIN) {
				t.lose("read written")
			}
			return
		}
		for off := 0; off+fanMetaLen <= n; {
			ev := buf[off:n]
			l := int(binary.LittleEndian.Uint32(ev))
			if l < fanMetaLen || l > len(ev) {
				t.lose("bad event")
				return
			}
			off += l
			mask := binary.LittleEndian.Uint64(ev[8:])
			fd := int(int32(binary.LittleEndian.Uint32(ev[16:])))
			if mask&unix.FAN_Q_OVERFLOW != 0 || fd < 0 {
				t.lose("queue overflow")
				continue
			}
			p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
			unix.Close(fd)
			if err != nil {
				t.lose("readlink written")
				continue
			}
			rel, ok := strings.CutPrefix(p, t.merged+"/")
			if !ok {
				t.lose("written outside: " + p) // written through another mount of the overlay
				continue
			}
			t.markDirty(rel)
			if r, ok := strings.CutSuffix(rel, " (deleted)"); ok {
				t.markDirty(r) // either: lstat says which
			}
		}
	}
}

// drainWrittenPause batches the background drain's reads.
const drainWrittenPause = 200 * time.Millisecond

// drainWrittenLoop reads the fd group's queue whenever it holds events,
// between reports too: each queued event holds the written file open, so
// a file deleted after it was written (a build's temporary files, a
// rotated log of a service, while no quiet report comes) kept its blocks
// on the upper disk until the next report read the queue. It ends once
// the tracker is no longer the agent's.
func (q *quiet) drainWrittenLoop(t *upperTracker) {
	mine := func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.track == t
	}
	for {
		q.trackMu.Lock()
		if !mine() || t.cl < 0 {
			q.trackMu.Unlock()
			return
		}
		fd := t.cl
		q.trackMu.Unlock()
		// A timeout: the descriptor may be closed (reseed) while this
		// waits on it, which poll does not notice.
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(pfd, 5000); err != nil && !errors.Is(err, unix.EINTR) {
			return
		} else if n <= 0 {
			continue
		}
		time.Sleep(drainWrittenPause)
		q.trackMu.Lock()
		if mine() && t.cl >= 0 {
			t.drainWritten()
		}
		q.trackMu.Unlock()
	}
}

// pathLess orders paths as the walk lists them: depth first, names in
// byte order, parents before children.
func pathLess(a, b string) bool {
	return strings.ReplaceAll(a, "/", "\x00") < strings.ReplaceAll(b, "/", "\x00")
}

// delta says what changed since the view, from the dirty paths alone.
// It changes nothing; commit makes it the view.
func (t *upperTracker) delta() (agentapi.LayerDelta, int, error) {
	d := agentapi.LayerDelta{Base: t.epoch}
	size := 0
	paths := make([]string, 0, len(t.dirty))
	for p := range t.dirty {
		paths = append(paths, p)
	}
	sort.Slice(paths, func(i, j int) bool { return pathLess(paths[i], paths[j]) })
	var done []string // subtrees removed or listed whole
	covered := func(p string) bool {
		for _, c := range done {
			if strings.HasPrefix(p, c+"/") {
				return true
			}
		}
		return false
	}
	seen := make(map[string]bool, len(paths))
	var linked []uint64 // inodes with more names than the one named
	for i := 0; i < len(paths); i++ {
		p := paths[i]
		if seen[p] || covered(p) {
			continue
		}
		seen[p] = true
		e, nlink, ok, err := t.entryAt(p)
		if err != nil {
			return d, 0, err
		}
		if ok && e.Kind != "dir" && nlink > 1 {
			linked = append(linked, e.Ino)
		}
		old, had := t.view[p]
		switch {
		case !ok:
			if had {
				d.Removed = append(d.Removed, p)
				size += len(p) + 8
				done = append(done, p)
			}
		case e.Kind == "dir" && (!had || old.Kind != "dir" || old.Ino != e.Ino):
			// New at this path (made, renamed here, copied up): its
			// whole subtree is new to the listing.
			if had {
				d.Removed = append(d.Removed, p)
				size += len(p) + 8
			}
			done = append(done, p)
			d.Changed = append(d.Changed, e)
			size += len(p) + manifestEntryBytes
			sub, err := manifestWithin(t.upper+"/"+p, agentapi.MaxQuietManifestBytes)
			if err != nil {
				return d, 0, err
			}
			for _, s := range sub {
				s.Path = p + "/" + s.Path
				d.Changed = append(d.Changed, s)
				size += len(s.Path) + manifestEntryBytes
			}
		case had && old.Kind == "dir" && e.Kind != "dir":
			d.Removed = append(d.Removed, p)
			d.Changed = append(d.Changed, e)
			size += 2*len(p) + manifestEntryBytes
			done = append(done, p)
		case !had || old != e:
			d.Changed = append(d.Changed, e)
			size += len(p) + manifestEntryBytes
		}
		if size > agentapi.MaxQuietManifestBytes {
			return d, 0, errManifestTooLarge
		}
		if i == len(paths)-1 && len(linked) > 0 {
			// A change to one name of a file changes every name's
			// entry (its inode's times): read the others too.
			for vp, ve := range t.view {
				if !seen[vp] && ve.Kind != "dir" && slices.Contains(linked, ve.Ino) {
					paths = append(paths, vp)
				}
			}
			linked = nil
		}
	}
	return d, size, nil
}

// entryAt returns the upper layer's entry at p as the walk would list it,
// and its link count: ok is false when there is none (no such path, a
// path through a symlink or a non-directory, or a kind the listing leaves
// out).
func (t *upperTracker) entryAt(p string) (agentapi.LayerEntry, uint64, bool, error) {
	dir, name := path.Split(p)
	root, err := unix.Open(t.upper, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return agentapi.LayerEntry{}, 0, false, err
	}
	defer unix.Close(root)
	pfd := root
	if dir != "" {
		pfd, err = unix.Openat2(root, strings.TrimSuffix(dir, "/"), &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_BENEATH | unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_MAGICLINKS,
		})
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			return agentapi.LayerEntry{}, 0, false, nil
		}
		if err != nil {
			return agentapi.LayerEntry{}, 0, false, err
		}
		defer unix.Close(pfd)
	}
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return agentapi.LayerEntry{}, 0, false, nil
		}
		return agentapi.LayerEntry{}, 0, false, err
	}
	e, ok := layerEntry(t.upper+"/"+p, p, &st)
	return e, uint64(st.Nlink), ok, nil
}

// commit makes the view the listing of epoch after d.
func (t *upperTracker) commit(epoch uint64, d agentapi.LayerDelta) {
	for _, r := range d.Removed {
		for p := range t.view {
			if p == r || strings.HasPrefix(p, r+"/") {
				t.viewBytes -= len(p) + manifestEntryBytes
				delete(t.view, p)
			}
		}
	}
	for _, e := range d.Changed {
		if _, had := t.view[e.Path]; !had {
			t.viewBytes += len(e.Path) + manifestEntryBytes
		}
		t.view[e.Path] = e
	}
	t.epoch, t.dirty = epoch, nil
	if t.viewBytes > agentapi.MaxQuietManifestBytes {
		t.lose("listing too large")
	}
}
