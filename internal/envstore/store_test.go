package envstore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/catalog"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// fakeBuilder writes small stand-in files instead of running the real tools.
type fakeBuilder struct {
	calls   atomic.Int32
	delay   time.Duration
	started chan struct{} // closed-once signal that a build began (optional)
	once    sync.Once
}

func (f *fakeBuilder) build(ctx context.Context, req buildRequest) (buildResult, error) {
	f.calls.Add(1)
	if f.started != nil {
		f.once.Do(func() { close(f.started) })
	}
	select {
	case <-time.After(f.delay):
	case <-ctx.Done():
		return buildResult{}, ctx.Err()
	}
	files := map[string]string{
		KernelFile:           "\x7fELF fake kernel",
		RootfsFile:           strings.Repeat("rootfs ", 1000),
		"modules/virtio.ko":  "virtio module",
		"modules/overlay.ko": "overlay module",
	}
	for rel, content := range files {
		p := filepath.Join(req.Dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return buildResult{}, err
		}
	}
	req.Emit(Event{Phase: "rootfs", Message: "fake"})
	return buildResult{
		Kernel:         KernelInfo{Package: "linux-image-fake-unsigned", Version: "1.0-1", Release: "6.1.0-fake"},
		Modules:        []string{"modules/virtio.ko", "modules/overlay.ko"},
		BuiltinModules: []string{"failover"},
		Tool:           "fake",
		Mirror:         "http://mirror.invalid/debian",
	}, nil
}

func newTestStore(t *testing.T) (*Store, *fakeBuilder) {
	t.Helper()
	dir := t.TempDir()
	s := New(filepath.Join(dir, "environments"), filepath.Join(dir, "cache"), WithLogger(testLogger(t)))
	fb := &fakeBuilder{}
	s.build = fb.build
	return s, fb
}

const testEnv = "debian:12-base"

func TestPullGetAndDamage(t *testing.T) {
	s, fb := newTestStore(t)
	ctx := context.Background()

	_, err := s.Get(testEnv)
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "pyro env pull debian:12-base") {
		t.Fatalf("Get before pull: %v", err)
	}
	if _, err := s.Get("nope:1"); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "unknown environment") {
		t.Fatalf("Get of an unknown name: %v", err)
	}

	var events []Event
	res, err := s.Pull(ctx, testEnv, PullOptions{Progress: func(e Event) { events = append(events, e) }})
	if err != nil {
		t.Fatal(err)
	}
	if res.AlreadyInstalled || res.Rebuilt || fb.calls.Load() != 1 {
		t.Fatalf("first pull: %+v, builds %d", res, fb.calls.Load())
	}
	if len(events) == 0 || events[len(events)-1].Phase != "install" {
		t.Fatalf("events: %+v", events)
	}
	m := res.Installed.Manifest
	if m.Name != testEnv || m.Version == "" || len(m.Files) != 4 || !strings.HasPrefix(m.Digest, "sha256:") || m.TotalBytes == 0 || m.Source != "local-build" {
		t.Fatalf("manifest: %+v", m)
	}
	inst, err := s.Get(testEnv)
	if err != nil {
		t.Fatal(err)
	}
	if inst.Dir != filepath.Join(s.root, "debian_12-base", m.Version) {
		t.Fatalf("dir %s", inst.Dir)
	}
	if got := inst.ModulePaths(); len(got) != 2 || got[0] != filepath.Join(inst.Dir, "modules/virtio.ko") {
		t.Fatalf("module paths %v", got)
	}
	if inst.KernelPath() != filepath.Join(inst.Dir, "vmlinux") || inst.RootfsPath() != filepath.Join(inst.Dir, "rootfs.ext4") {
		t.Fatal("paths")
	}
	// A fast check that hashes nothing (every file as last hashed) leaves
	// the stamps file as it is: every start checks, none rewrites it.
	stamps := filepath.Join(inst.Dir, stampsFile)
	before, err := os.Stat(stamps)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(testEnv); err != nil {
		t.Fatal(err)
	}
	if after, err := os.Stat(stamps); err != nil || !os.SameFile(before, after) {
		t.Fatalf("stamps rewritten by a check that hashed nothing: %v", err)
	}

	res, err = s.Pull(ctx, testEnv, PullOptions{})
	if err != nil || !res.AlreadyInstalled || fb.calls.Load() != 1 {
		t.Fatalf("second pull: %+v %v, builds %d", res, err, fb.calls.Load())
	}

	damage := []struct {
		name    string
		do      func(dir string)
		getSees bool // the fast check notices
		want    string
	}{
		{"truncated rootfs", func(d string) { os.Truncate(filepath.Join(d, RootfsFile), 10) }, true, "rootfs.ext4 has 10 bytes"},
		{"bit-flipped kernel", func(d string) { flip(t, filepath.Join(d, KernelFile)) }, true, "vmlinux has sha256"},
		{"bit-flipped module", func(d string) { flip(t, filepath.Join(d, "modules/overlay.ko")) }, true, "modules/overlay.ko has sha256"},
		{"missing module", func(d string) { os.Remove(filepath.Join(d, "modules/virtio.ko")) }, true, "modules/virtio.ko is missing"},
		{"missing manifest", func(d string) { os.Remove(filepath.Join(d, ManifestFile)) }, true, "manifest.json is missing"},
		{"garbled manifest", func(d string) { os.WriteFile(filepath.Join(d, ManifestFile), []byte("{"), 0o644) }, true, "parse manifest.json"},
		{"bit-flipped rootfs", func(d string) { flip(t, filepath.Join(d, RootfsFile)) }, false, ""},
	}
	for _, c := range damage {
		t.Run(c.name, func(t *testing.T) {
			before := fb.calls.Load()
			c.do(inst.Dir)
			_, err := s.Get(testEnv)
			if c.getSees {
				if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), c.want) ||
					!strings.Contains(err.Error(), `environment "debian:12-base" is damaged`) || !strings.Contains(err.Error(), "to rebuild it") {
					t.Fatalf("Get: %v", err)
				}
				st, err := s.Inspect(testEnv)
				if err != nil || st.Damaged == "" {
					t.Fatalf("Inspect: %+v %v", st, err)
				}
			} else if err != nil {
				t.Fatalf("Get hashed the rootfs: %v", err)
			}
			res, err := s.Pull(ctx, testEnv, PullOptions{})
			if err != nil || !res.Rebuilt || res.AlreadyInstalled || fb.calls.Load() != before+1 {
				t.Fatalf("Pull: %+v %v", res, err)
			}
			if _, err := s.Get(testEnv); err != nil {
				t.Fatalf("Get after rebuild: %v", err)
			}
		})
	}

	res, err = s.Pull(ctx, testEnv, PullOptions{Force: true})
	if err != nil || !res.Rebuilt {
		t.Fatalf("forced pull: %+v %v", res, err)
	}
	if left, _ := filepath.Glob(filepath.Join(s.root, ".tmp-*")); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}

func flip(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x01
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentPullsBuildOnce(t *testing.T) {
	s, fb := newTestStore(t)
	fb.delay = 300 * time.Millisecond
	var wg sync.WaitGroup
	results := make([]PullResult, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A second Store on the same root: the flock, not a mutex, serializes.
			st := New(s.root, s.cacheDir)
			st.build = fb.build
			results[i], errs[i] = st.Pull(context.Background(), testEnv, PullOptions{})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := fb.calls.Load(); n != 1 {
		t.Fatalf("built %d times", n)
	}
	if results[0].AlreadyInstalled == results[1].AlreadyInstalled {
		t.Fatalf("results %+v", results)
	}
}

func TestPullCancelled(t *testing.T) {
	s, fb := newTestStore(t)
	fb.delay = time.Minute
	fb.started = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-fb.started
		cancel()
	}()
	_, err := s.Pull(ctx, testEnv, PullOptions{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	ents, _ := os.ReadDir(s.root)
	for _, e := range ents {
		if e.Name() != lockFile {
			t.Errorf("left behind: %s", e.Name())
		}
	}
	if _, err := s.Get(testEnv); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Get: %v", err)
	}

	// A waiter gives up when its context ends.
	fl, err := s.lock(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Unlock()
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	var sawWait bool
	_, err = s.Pull(ctx, testEnv, PullOptions{Progress: func(e Event) { sawWait = sawWait || e.Phase == "lock" }})
	if !errors.Is(err, context.DeadlineExceeded) || !sawWait {
		t.Fatalf("waiting pull: %v (saw wait %v)", err, sawWait)
	}
}

func TestPullUnknown(t *testing.T) {
	s, _ := newTestStore(t)
	if _, err := s.Pull(context.Background(), "ubuntu:24.04", PullOptions{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := s.Inspect("ubuntu:24.04"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatal(err)
	}
}

func TestInspectAndList(t *testing.T) {
	s, _ := newTestStore(t)
	if _, err := s.Pull(context.Background(), testEnv, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(catalog.All()) {
		t.Fatalf("list has %d entries", len(list))
	}
	for _, st := range list {
		installed := st.Entry.Name == testEnv
		if st.Installed != installed || (st.Manifest != nil) != installed || st.Damaged != "" {
			t.Errorf("%s: %+v", st.Entry.Name, st)
		}
		if installed && (st.SizeBytes <= 0 || st.Dir == "") {
			t.Errorf("%s: size %d dir %q", st.Entry.Name, st.SizeBytes, st.Dir)
		}
	}
}

func TestPrune(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	for _, n := range []string{testEnv, "debian:12"} {
		if _, err := s.Pull(ctx, n, PullOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cur, _ := catalog.Lookup(testEnv)
	mk := func(rel string) string {
		p := filepath.Join(s.root, rel)
		os.MkdirAll(p, 0o755)
		os.WriteFile(filepath.Join(p, "junk"), []byte("junk"), 0o644)
		return p
	}
	partial := mk(".tmp-123")
	old := mk("debian_12-base/0.9.0")
	mk("debian_11/1.0.0")
	gone := filepath.Join(s.root, "debian_11")
	foreign := mk("Not Ours")
	kOld := filepath.Join(s.cacheDir, "kernels", "6.1.0-old")
	kUsed := filepath.Join(s.cacheDir, "kernels", kernelCacheKey("1.0-1"))
	kTmp := filepath.Join(s.cacheDir, "kernels", ".tmp-9")
	for _, d := range []string{kOld, kUsed, kTmp} {
		os.MkdirAll(d, 0o755)
	}
	// Damage debian:12 so it goes too.
	d12, _ := catalog.Lookup("debian:12")
	os.Truncate(filepath.Join(s.root, "debian_12", d12.Version, RootfsFile), 1)

	res, err := s.Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	removed := map[string]string{}
	for _, it := range res.Removed {
		removed[it.Path] = it.Reason
	}
	for _, p := range []string{partial, old, gone, kOld, kTmp, filepath.Join(s.root, "debian_12", d12.Version)} {
		if _, ok := removed[p]; !ok {
			t.Errorf("%s not pruned (removed %v)", p, removed)
		}
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s still exists", p)
		}
	}
	for _, p := range []string{foreign, kUsed, filepath.Join(s.root, "debian_12-base", cur.Version)} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was removed", p)
		}
	}
	if !strings.Contains(removed[old], "superseded") || !strings.Contains(removed[gone], "no longer in the catalog") ||
		!strings.Contains(removed[filepath.Join(s.root, "debian_12", d12.Version)], "damaged") {
		t.Errorf("reasons: %v", removed)
	}
	if res.FreedBytes <= 0 || len(res.Removed) != 6 {
		t.Errorf("result %+v", res)
	}
	if _, err := s.Get(testEnv); err != nil {
		t.Fatal(err)
	}
	again, err := s.Prune(ctx)
	if err != nil || len(again.Removed) != 0 {
		t.Fatalf("second prune: %+v %v", again, err)
	}
}
