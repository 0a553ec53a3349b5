package envstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pyro-mcp/pyro/internal/catalog"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

func TestNames(t *testing.T) {
	for _, ok := range []string{"debian:12", "debian:12-base", "debian:12-build", "alpine", "a.b:c-d.1"} {
		if err := validateName(ok); err != nil {
			t.Errorf("validateName(%q) = %v", ok, err)
		}
		back, good := nameFromSafe(safeName(ok))
		if !good || back != ok {
			t.Errorf("nameFromSafe(safeName(%q)) = %q, %v", ok, back, good)
		}
	}
	for _, bad := range []string{"", "../x", "debian:../../etc", "a/b", "Debian:12", "debian_12", "a:b:c", ".hidden", "debian:12 ", "x..y", strings.Repeat("a", 70)} {
		if err := validateName(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("validateName(%q) = %v, want invalid argument", bad, err)
		}
	}
	if safeName("debian:12") != "debian_12" {
		t.Fatal(safeName("debian:12"))
	}
	for _, bad := range []string{".tmp-x", "a_b_c", "..", "x y"} {
		if _, ok := nameFromSafe(bad); ok {
			t.Errorf("nameFromSafe(%q) accepted", bad)
		}
	}
	for _, v := range []string{"1.0.0", "2", "1.0.0+b1"} {
		if validateVersion(v) != nil {
			t.Errorf("version %q rejected", v)
		}
	}
	for _, v := range []string{"", "..", "1/2", ".1"} {
		if validateVersion(v) == nil {
			t.Errorf("version %q accepted", v)
		}
	}
	if _, err := New(t.TempDir(), t.TempDir()).Get("../../etc"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("Get of a bad name: %v", err)
	}
}

func TestMirror(t *testing.T) {
	if got := mirrorFromApt("testdata/apt-deb822", "bookworm"); got != "http://mirror.example.org/debian" {
		t.Errorf("deb822: %q", got)
	}
	if got := mirrorFromApt("testdata/apt-oneline", "bookworm"); got != "http://oneline.example.org/debian" {
		t.Errorf("one-line: %q", got)
	}
	if got := mirrorFromApt("testdata/none", "bookworm"); got != "" {
		t.Errorf("no sources: %q", got)
	}
	t.Setenv(MirrorEnv, "")
	if got := resolveMirror("", "testdata/none"); got != DefaultMirror {
		t.Errorf("default: %q", got)
	}
	if got := resolveMirror("http://explicit/debian", "testdata/apt-deb822"); got != "http://explicit/debian" {
		t.Errorf("explicit: %q", got)
	}
	t.Setenv(MirrorEnv, "http://env/debian")
	if got := resolveMirror("", "testdata/apt-deb822"); got != "http://env/debian" {
		t.Errorf("env: %q", got)
	}
}

// fakeBzImage builds a setup header around payload as the boot protocol lays it out.
func fakeBzImage(setupSects byte, payloadOffset int, payload []byte) []byte {
	base := (int(setupSects) + 1) * 512
	if setupSects == 0 {
		base = 5 * 512
	}
	b := make([]byte, base+payloadOffset+len(payload)+100)
	b[0x1f1] = setupSects
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x206:], 0x020f)
	binary.LittleEndian.PutUint32(b[0x248:], uint32(payloadOffset))
	binary.LittleEndian.PutUint32(b[0x24c:], uint32(len(payload)))
	copy(b[base+payloadOffset:], payload)
	return b
}

func TestBzImagePayload(t *testing.T) {
	payload := append([]byte{0x02, 0x21, 0x4c, 0x18, 1, 2, 3, 4}, 0x10, 0, 0, 0)
	for _, sects := range []byte{0, 4, 39} {
		got, err := bzImagePayload(fakeBzImage(sects, 716, payload))
		if err != nil {
			t.Fatalf("setup_sects %d: %v", sects, err)
		}
		if !bytes.Equal(got, payload) || !isLZ4(got) {
			t.Fatalf("setup_sects %d: payload % x", sects, got)
		}
		stream, size := splitSizeTrailer(got)
		if size != 16 || len(stream) != 8 {
			t.Fatalf("trailer: %d, %d", len(stream), size)
		}
	}
	bad := fakeBzImage(4, 0, payload)
	copy(bad[0x202:], "XXXX")
	if _, err := bzImagePayload(bad); err == nil {
		t.Error("accepted a missing HdrS")
	}
	long := fakeBzImage(4, 0, payload)
	binary.LittleEndian.PutUint32(long[0x24c:], 1<<30)
	if _, err := bzImagePayload(long); err == nil {
		t.Error("accepted a payload past the end")
	}
	if _, err := bzImagePayload(make([]byte, 100)); err == nil {
		t.Error("accepted a short file")
	}
}

func TestPVHNote(t *testing.T) {
	note := func(name string, typ uint32, desc []byte) []byte {
		var b bytes.Buffer
		n := append([]byte(name), 0)
		binary.Write(&b, binary.LittleEndian, []uint32{uint32(len(n)), uint32(len(desc)), typ})
		b.Write(n)
		b.Write(make([]byte, (4-len(n)%4)%4))
		b.Write(desc)
		b.Write(make([]byte, (4-len(desc)%4)%4))
		return b.Bytes()
	}
	notes := append(note("GNU", 3, make([]byte, 20)), note("Xen", 18, make([]byte, 4))...)
	if !hasPVHNote(notes, binary.LittleEndian) {
		t.Error("missed the PVH note")
	}
	if hasPVHNote(note("Xen", 5, make([]byte, 4)), binary.LittleEndian) {
		t.Error("took another Xen note for PVH")
	}
}

func TestModuleOrder(t *testing.T) {
	// Shaped like the 6.1 cloud kernel: virtio depends on virtio_ring.
	depends := map[string][]string{
		"virtio":         {"virtio_ring"},
		"virtio_ring":    {},
		"virtio_mmio":    {"virtio", "virtio_ring"},
		"virtio_blk":     {"virtio", "virtio_ring"},
		"virtio_console": {"virtio", "virtio_ring"},
		"failover":       {},
		"net_failover":   {"failover"},
		"virtio_net":     {"virtio_ring", "virtio", "net_failover"},
		"overlay":        {},
	}
	fake := func(m map[string][]string) func(string) ([]string, bool, error) {
		return func(n string) ([]string, bool, error) {
			d, ok := m[n]
			return d, ok, nil
		}
	}
	order, missing, err := moduleOrder(NeededModules, fake(depends))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console", "failover", "net_failover", "virtio_net", "overlay"}
	if !reflect.DeepEqual(order, want) || len(missing) != 0 {
		t.Fatalf("order %v missing %v", order, missing)
	}
	checkTopo(t, order, depends)

	// Built-ins are skipped and reported; dependencies pulled in transitively.
	delete(depends, "overlay")
	delete(depends, "failover")
	depends["virtio_blk"] = []string{"virtio", "blk_extra"}
	depends["blk_extra"] = []string{"virtio_ring"}
	order, missing, err = moduleOrder(NeededModules, fake(depends))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(missing, []string{"failover", "overlay"}) || !slices.Contains(order, "blk_extra") {
		t.Fatalf("order %v missing %v", order, missing)
	}
	checkTopo(t, order, depends)

	depends["virtio_ring"] = []string{"virtio_net"}
	if _, _, err := moduleOrder(NeededModules, fake(depends)); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("cycle: %v", err)
	}
}

func checkTopo(t *testing.T, order []string, depends map[string][]string) {
	t.Helper()
	pos := map[string]int{}
	for i, m := range order {
		pos[m] = i
	}
	for _, m := range order {
		for _, d := range depends[m] {
			if p, ok := pos[d]; ok && p > pos[m] {
				t.Errorf("%s loads before its dependency %s", m, d)
			}
		}
	}
}

func TestParseModinfo(t *testing.T) {
	data := []byte("license=GPL\x00depends=virtio_ring,virtio,net-failover\x00name=virtio_net\x00\x00")
	if got := parseModinfoDepends(data); !reflect.DeepEqual(got, []string{"virtio_ring", "virtio", "net_failover"}) {
		t.Fatal(got)
	}
	if got := parseModinfoDepends([]byte("depends=\x00")); len(got) != 0 {
		t.Fatal(got)
	}
	if n, ok := moduleName("nf-conntrack.ko.xz"); !ok || n != "nf_conntrack" {
		t.Fatal(n, ok)
	}
}

func TestImageSize(t *testing.T) {
	if got := imageSizeMiB(126 << 20); got != 320 {
		t.Errorf("126 MiB tree: %d", got)
	}
	if got := imageSizeMiB(0); got != 128 {
		t.Errorf("empty tree: %d", got)
	}
}

func TestBootstrapArgs(t *testing.T) {
	e, _ := catalog.Lookup("debian:12")
	got := bootstrapArgs("mmdebstrap", e, "/d", "http://m/debian", true)
	want := []string{"--variant=minbase", "--architectures=amd64", "--hook-dir=" + mergedUsrHooks,
		"--include=bash,coreutils,python3,curl,git,ca-certificates", "bookworm", "/d", "http://m/debian"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mmdebstrap: %q", got)
	}
	base, _ := catalog.Lookup("debian:12-base")
	got = bootstrapArgs("debootstrap", base, "/d", "http://m/debian", false)
	want = []string{"--variant=minbase", "--arch=amd64", "bookworm", "/d", "http://m/debian"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("debootstrap: %q", got)
	}
}

func TestCustomizeRoot(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"etc", "var/cache/apt/archives/partial", "var/lib/apt/lists/partial"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "var/cache/apt/archives/x.deb"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(root, "var/lib/apt/lists/deb.debian.org_Packages"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/resolv.conf"), []byte("nameserver 1.1.1.1\n"), 0o644)
	outside := filepath.Join(t.TempDir(), "host-hostname")
	os.WriteFile(outside, []byte("host\n"), 0o644)
	os.Symlink(outside, filepath.Join(root, "etc/hostname"))
	if err := customizeRoot(root); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/hostname")); string(b) != "pyro\n" {
		t.Errorf("hostname %q", b)
	}
	if b, _ := os.ReadFile(outside); string(b) != "host\n" {
		t.Error("followed a symlink out of the root")
	}
	for _, gone := range []string{"var/cache/apt/archives/x.deb", "var/lib/apt/lists/deb.debian.org_Packages", "etc/resolv.conf"} {
		if _, err := os.Lstat(filepath.Join(root, gone)); err == nil {
			t.Errorf("%s left in the root", gone)
		}
	}
	st, err := os.Stat(filepath.Join(root, "tmp"))
	if err != nil || st.Mode()&os.ModeSticky == 0 || st.Mode().Perm() != 0o777 {
		t.Errorf("tmp: %v %v", st.Mode(), err)
	}
	for _, d := range []string{"workspace", "run"} {
		if st, err := os.Stat(filepath.Join(root, d)); err != nil || !st.IsDir() {
			t.Errorf("%s: %v", d, err)
		}
	}
}

func TestRunToolKillsGroupOnCancel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	pidFile := filepath.Join(t.TempDir(), "pid")
	start := time.Now()
	// The grandchild ignores nothing; the shell traps TERM to prove the
	// group (not only the shell) is signalled.
	_, err := runTool(ctx, command{name: "sh", args: []string{"-c", "sleep 30 & echo $! > " + pidFile + "; wait"}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
	b, _ := os.ReadFile(pidFile)
	pid := strings.TrimSpace(string(b))
	if pid == "" {
		t.Fatal("no grandchild pid")
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		st, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil || strings.Contains(string(st), ") Z ") {
			break // gone or a zombie awaiting init
		}
		if time.Now().After(deadline) {
			t.Fatalf("grandchild %s survived", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := runTool(context.Background(), command{name: "sh", args: []string{"-c", "echo oops >&2; exit 3"}}); err == nil || !strings.Contains(err.Error(), "oops") {
		t.Fatalf("failure output: %v", err)
	}
}

// A failing tool's stdout and stderr are copied into one tail by two
// goroutines at once: the tail stays whole (run with -race to see the old
// unguarded buffer fail).
func TestRunToolTailOfBothStreams(t *testing.T) {
	_, err := runTool(context.Background(), command{name: "sh", args: []string{"-c",
		`i=0; while [ $i -lt 500 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done; exit 3`}})
	if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "499") {
		t.Fatalf("failed tool: %v", err)
	}
}
