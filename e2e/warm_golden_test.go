package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestWarmGoldenNotWritableByQEMU (#14): a restored guest's QEMU is the
// process a guest escape would own, so it must hold no way to change what
// later restores load. It has no descriptor or mapping of a snapshot file
// open for writing, the account it runs as cannot open one for writing,
// and a guest that writes most of its memory leaves every snapshot byte as
// it was. (Before, QEMU mapped the golden RAM file from a read-write open
// and owned it, so a compromised QEMU could rewrite every later guest.)
func TestWarmGoldenNotWritableByQEMU(t *testing.T) {
	requireE2E(t)
	home, env := warmHome(t)
	snap := prepareSnapshot(t, env, "--workspace", baseEnv)
	if !strings.HasPrefix(snap, home) {
		t.Fatalf("snapshot %s outside the private home", snap)
	}
	before := fingerprints(t, snap)

	var w struct {
		WorkspaceID string `json:"workspace_id"`
		Start       string `json:"start"`
	}
	mustWS(t, env, &w, "create", baseEnv)
	defer ws(t, env, nil, "delete", w.WorkspaceID)
	if w.Start != "warm" {
		log, _ := os.ReadFile(filepath.Join(home, "workspaces", w.WorkspaceID, "supervisor.log"))
		t.Fatalf("workspace start = %q, want warm; supervisor log:\n%s", w.Start, log)
	}
	pidText, err := os.ReadFile(filepath.Join(home, "workspaces", w.WorkspaceID, "vmm.pid"))
	if err != nil {
		t.Fatal(err)
	}
	proc := "/proc/" + strings.TrimSpace(string(pidText))

	// 1. No writable descriptor, and no mapping at all, of a snapshot file.
	fds, err := os.ReadDir(proc + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		target, err := os.Readlink(proc + "/fd/" + fd.Name())
		if err != nil || !strings.HasPrefix(target, snap) {
			continue
		}
		info, err := os.ReadFile(proc + "/fdinfo/" + fd.Name())
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				flags, _ := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
				if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
					t.Errorf("qemu holds %s open for writing (fd %s, flags %o)", target, fd.Name(), flags)
				}
			}
		}
	}
	maps, err := os.ReadFile(proc + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(maps), "\n") {
		if strings.Contains(line, snap) {
			t.Errorf("qemu maps a snapshot file: %s", line)
		}
	}

	// 2. The account QEMU runs as cannot open a snapshot file for writing
	// (when it is pyro's own account, file modes cannot keep it out; the
	// descriptors above are then what counts).
	uid, gid := procIDs(t, proc)
	if uid != os.Geteuid() {
		for name := range before {
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Join(snap, name), &st); err != nil {
				t.Fatal(err)
			}
			m := st.Mode & 0o777
			if int(st.Uid) == uid || m&0o002 != 0 || (int(st.Gid) == gid && m&0o020 != 0) {
				t.Errorf("%s (owner %d:%d, mode %o) is writable by qemu's account %d:%d", name, st.Uid, st.Gid, m, uid, gid)
			}
		}
	}

	// 3. The guest writes most of its memory: no snapshot byte changes.
	fill := "mkdir -p /run/fill && mount -t tmpfs -o size=700m fill /run/fill && " +
		"dd if=/dev/zero of=/run/fill/a bs=1M count=600 2>/dev/null && echo filled"
	if m := wsExec(t, env, w.WorkspaceID, "sh", "-c", fill); m["stdout"] != "filled\n" {
		t.Fatalf("fill guest memory: %v", m)
	}
	after := fingerprints(t, snap)
	for name, fp := range before {
		if after[name] != fp {
			t.Errorf("%s changed while a restored guest ran: %s -> %s", name, fp, after[name])
		}
	}
}

// fingerprints maps each file of a snapshot directory to its sha256 and
// the stamp (inode, size, ctime) the store checks.
func fingerprints(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = hex.EncodeToString(h.Sum(nil))[:16] + " " + strconv.FormatUint(st.Ino, 10) + " " +
			strconv.FormatInt(st.Size, 10) + " " + strconv.FormatInt(st.Ctim.Nano(), 10)
	}
	return out
}

// procIDs is the effective uid and gid of the process at proc.
func procIDs(t *testing.T, proc string) (int, int) {
	t.Helper()
	status, err := os.ReadFile(proc + "/status")
	if err != nil {
		t.Fatal(err)
	}
	uid, gid := -1, -1
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		f := strings.Fields(v)
		if len(f) < 2 {
			continue
		}
		switch k {
		case "Uid":
			uid, _ = strconv.Atoi(f[1])
		case "Gid":
			gid, _ = strconv.Atoi(f[1])
		}
	}
	return uid, gid
}
