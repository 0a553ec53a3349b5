package envstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gofrs/flock"

	"github.com/pyro-mcp/pyro/internal/catalog"
	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/oci"
)

// PullOptions tune Pull.
type PullOptions struct {
	Mirror   string      // Debian mirror; default $PYRO_DEBIAN_MIRROR, else the host's apt sources
	Force    bool        // rebuild even when installed and intact
	Progress func(Event) // called from the pulling goroutine; may be nil
	// Registry, when set (default $PYRO_REGISTRY), is tried first: the
	// environment is fetched from <Registry>/<name> (pushed there by
	// `pyro env push`) and verified; if that fails the local build runs.
	Registry string
	OCI      oci.Options // registry access
}

// Event reports progress. Phases: "lock", "resolve", "kernel", "rootfs",
// "image", "verify", "install". Done/Total count bytes where known, else 0.
type Event struct {
	Phase   string `json:"phase"`
	Message string `json:"message"`
	Done    int64  `json:"done"`
	Total   int64  `json:"total"`
}

// PullResult says what Pull did.
type PullResult struct {
	Installed        Installed
	AlreadyInstalled bool  // it was installed and intact; nothing was built
	Rebuilt          bool  // a damaged, partial or forced install was replaced
	DurationMS       int64 // wall time of the call
}

// buildRequest asks a builder to fill Dir with vmlinux, rootfs.ext4 and
// modules/*.ko.
type buildRequest struct {
	Entry  catalog.Entry
	Dir    string
	Mirror string
	Emit   func(Event)
}

// buildResult is what a builder reports besides the files it wrote.
type buildResult struct {
	Kernel         KernelInfo
	Modules        []string // load order, relative paths
	BuiltinModules []string
	Tool           string
	Mirror         string
	// Set by the registry source: where it came from, when it was built,
	// and the digest the files must add up to.
	Source     string
	BuiltAt    time.Time
	WantDigest string
}

type buildFunc func(ctx context.Context, req buildRequest) (buildResult, error)

// lock takes the store's exclusive lock, waiting until ctx ends.
func (s *Store) lock(ctx context.Context, emit func(Event)) (*flock.Flock, error) {
	if err := os.MkdirAll(s.root, 0o755); err != nil {
		return nil, fmt.Errorf("create environment store: %w", err)
	}
	fl := flock.New(filepath.Join(s.root, lockFile))
	ok, err := fl.TryLock()
	if err != nil {
		return nil, fmt.Errorf("lock environment store: %w", err)
	}
	if ok {
		return fl, nil
	}
	if emit != nil {
		emit(Event{Phase: "lock", Message: "waiting for another pull or prune to finish"})
	}
	ok, err = fl.TryLockContext(ctx, 250*time.Millisecond)
	if err != nil || !ok {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("wait for environment store lock: %w", ctx.Err())
		}
		return nil, fmt.Errorf("lock environment store: %w", err)
	}
	return fl, nil
}

// Pull makes the current catalog version of name installed and intact. An
// intact install (every sha256 checked, the rootfs included) makes it a no-op;
// a damaged or partial one is rebuilt. The build happens in <root>/.tmp-* and
// is installed by rename; if ctx ends, the build tools are killed and the
// temp directory removed.
func (s *Store) Pull(ctx context.Context, name string, opts PullOptions) (PullResult, error) {
	start := time.Now()
	var res PullResult
	e, err := lookup(name)
	if err != nil {
		return res, err
	}
	var mu sync.Mutex
	emit := func(ev Event) {
		s.log.Debug("env pull", "env", name, "phase", ev.Phase, "msg", ev.Message, "done", ev.Done, "total", ev.Total)
		if opts.Progress != nil {
			mu.Lock()
			defer mu.Unlock()
			opts.Progress(ev)
		}
	}

	// An intact install needs no lock: installs are renames, so this sees a
	// whole directory or none, and pulling what is there never waits for
	// another environment's build.
	if !opts.Force {
		if inst, reason, err := s.check(e, true); err == nil && reason == "" {
			res.Installed = inst
			res.AlreadyInstalled = true
			res.DurationMS = time.Since(start).Milliseconds()
			return res, nil
		}
	}

	fl, err := s.lock(ctx, emit)
	if err != nil {
		return res, err
	}
	defer fl.Unlock()

	emit(Event{Phase: "verify", Message: "checking installed copy"})
	inst, reason, err := s.check(e, true)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
	case err != nil:
		return res, err
	case reason == "" && !opts.Force:
		res.Installed = inst
		res.AlreadyInstalled = true
		res.DurationMS = time.Since(start).Milliseconds()
		return res, nil
	default:
		res.Rebuilt = true
		if reason != "" {
			s.log.Info("rebuilding damaged environment", "env", name, "reason", reason)
		}
	}

	s.removeStaleTemps()
	tmp, err := os.MkdirTemp(s.root, tmpPrefix)
	if err != nil {
		return res, fmt.Errorf("create build directory: %w", err)
	}
	installed := false
	defer func() {
		if !installed {
			s.removeBuild(tmp, "partial build")
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return res, err
	}

	br, err := s.fetchOrBuild(ctx, buildRequest{Entry: e, Dir: tmp, Mirror: opts.Mirror, Emit: emit}, opts)
	if err != nil {
		if ctx.Err() != nil {
			return res, fmt.Errorf("pull environment %q: %w", name, ctx.Err())
		}
		return res, fmt.Errorf("build environment %q: %w", name, err)
	}

	emit(Event{Phase: "verify", Message: "computing digests"})
	files, err := hashTree(tmp, func(rel string, done, total int64) {
		if rel == RootfsFile {
			emit(Event{Phase: "verify", Message: "hashing " + rel, Done: done, Total: total})
		}
	})
	if err != nil {
		return res, fmt.Errorf("build environment %q: %w", name, err)
	}
	m := Manifest{
		Name:           e.Name,
		Version:        e.Version,
		Description:    e.Description,
		Packages:       e.Packages,
		Kernel:         br.Kernel,
		Files:          files,
		Modules:        nonNil(br.Modules),
		BuiltinModules: nonNil(br.BuiltinModules),
		Source:         orDefault(br.Source, "local-build"),
		BuildTool:      br.Tool,
		Mirror:         br.Mirror,
		BuiltAt:        orTime(br.BuiltAt, time.Now().UTC().Truncate(time.Second)),
		Digest:         computeDigest(files),
	}
	for _, f := range files {
		m.TotalBytes += f.Size
	}
	if br.WantDigest != "" && m.Digest != br.WantDigest {
		return res, errdefs.Wrap(errdefs.ErrInvalidArgument, oci.ErrDigestMismatch, "", "environment %q from %s: files add up to %s, the pushed manifest says %s", name, br.Source, m.Digest, br.WantDigest)
	}
	if r := verify(tmp, m, e.Name, e.Version, false); r != "" {
		return res, fmt.Errorf("build environment %q: result is incomplete: %s", name, r)
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("pull environment %q: %w", name, err)
	}
	if err := writeManifest(tmp, m); err != nil {
		return res, fmt.Errorf("write manifest of %q: %w", name, err)
	}

	emit(Event{Phase: "install", Message: "installing " + e.Name + " " + e.Version})
	dir := s.versionDir(e)
	if err := s.install(tmp, dir); err != nil {
		return res, fmt.Errorf("install environment %q: %w", name, err)
	}
	installed = true
	res.Installed = Installed{Dir: dir, Manifest: m}
	res.DurationMS = time.Since(start).Milliseconds()
	return res, nil
}

// install renames the finished build into place, replacing whatever was there.
func (s *Store) install(tmp, dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	var old string
	if _, err := os.Lstat(dir); err == nil {
		o, err := os.MkdirTemp(s.root, tmpPrefix+"old-")
		if err != nil {
			return err
		}
		old = filepath.Join(o, "env")
		if err := os.Rename(dir, old); err != nil {
			os.Remove(o)
			return err
		}
		defer s.removeBuild(o, "replaced environment")
	}
	if err := os.Rename(tmp, dir); err != nil {
		if old != "" {
			_ = os.Rename(old, dir)
		}
		return err
	}
	if d, err := os.Open(filepath.Dir(dir)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// removeStaleTemps removes leftovers of builds that died without cleaning
// up. Call only with the lock held: then no build is running.
func (s *Store) removeStaleTemps() {
	ents, _ := os.ReadDir(s.root)
	for _, d := range ents {
		if strings.HasPrefix(d.Name(), tmpPrefix) {
			s.removeBuild(filepath.Join(s.root, d.Name()), "stale build")
		}
	}
}

// removeBuild removes dir, a build directory or a replaced install (what
// says which, for the log). A failure is only logged: the next pull or
// prune sweeps it.
func (s *Store) removeBuild(dir, what string) {
	if err := removeTree(dir); err != nil {
		s.log.Warn("remove "+what, "dir", dir, "err", err)
	}
}

// removeTree removes a build tree. A killed bootstrap tool can leave mounts
// (proc, sys, dev/pts) inside it; they are detached first so RemoveAll never
// walks into a host filesystem.
func removeTree(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	mounts, err := mountsUnder(abs)
	if err != nil {
		return err
	}
	for _, m := range mounts { // deepest first
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("unmount %s: %w", m, err)
		}
	}
	if left, _ := mountsUnder(abs); len(left) > 0 {
		return fmt.Errorf("refusing to remove %s: %s is still mounted", abs, left[0])
	}
	return os.RemoveAll(abs)
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, sc.Err()
}

// unescapeMount decodes the octal escapes (\040 etc.) of /proc/self/mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%3o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func orTime(t, def time.Time) time.Time {
	if t.IsZero() {
		return def
	}
	return t
}
