package qemu

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/vmdir"
	"github.com/pyro-mcp/pyro/internal/vmm"
)

func testSpec(t *testing.T) vmm.Spec {
	dir := t.TempDir()
	for _, f := range []string{"vmlinux", "initrd", "root.ext4", "ws.ext4"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return vmm.Spec{
		Dir: vmdir.Dir(dir), Kernel: filepath.Join(dir, "vmlinux"), Initrd: filepath.Join(dir, "initrd"),
		RootDisk: filepath.Join(dir, "root.ext4"), WorkspaceDisk: filepath.Join(dir, "ws.ext4"),
		VCPUs: 1, MemMiB: 256,
	}
}

func argAfter(args []string, flag, prefix string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && strings.HasPrefix(args[i+1], prefix) {
			return args[i+1]
		}
	}
	return ""
}

// QEMU gets its seccomp sandbox, and no host path at all: every file is a
// descriptor pyro opened.
func TestArgsSandboxAndDescriptors(t *testing.T) {
	spec := testSpec(t)
	args := New("/usr/bin/qemu-system-x86_64", "tcg").Args(spec)
	if got := argAfter(args, "-sandbox", ""); got != "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny" {
		t.Errorf("-sandbox %q", got)
	}
	for _, a := range args {
		if strings.Contains(a, string(spec.Dir)) && a != spec.Dir.VMMName() {
			t.Errorf("argument names a host path: %q", a)
		}
	}
	want := map[[2]string]string{
		{"-kernel", ""}:              "/proc/self/fd/3",
		{"-initrd", ""}:              "/proc/self/fd/4",
		{"-add-fd", "fd=5"}:          "fd=5,set=1",
		{"-chardev", "socket,id=ag"}: "socket,id=agent,fd=6,server=on,wait=off",
		{"-chardev", "socket,id=qm"}: "socket,id=qmp,fd=7,server=on,wait=off",
		{"-add-fd", "fd=8"}:          "fd=8,set=2,opaque=ws0:rw",
		{"-add-fd", "fd=9"}:          "fd=9,set=2,opaque=ws0:ro",
		{"-serial", ""}:              "stdio",
		{"-name", ""}:                spec.Dir.VMMName(),
	}
	for k, v := range want {
		if got := argAfter(args, k[0], k[1]); got != v {
			t.Errorf("%s %s...: got %q, want %q", k[0], k[1], got, v)
		}
	}
	spec.WorkspaceDisk = ""
	if got := argAfter(New("q", "tcg").Args(spec), "-add-fd", "fd=8"); got != "" {
		t.Errorf("no workspace disk, yet %q", got)
	}
}

// Command hands QEMU the files in the order Args names them, a scrubbed
// environment and "/" as its working directory.
func TestCommandFilesAndEnv(t *testing.T) {
	t.Setenv("PYRO_MCP_TOKEN", "sekrit-token")
	t.Setenv("PYRO_HOME", "/somewhere")
	spec := testSpec(t)
	cmd, cleanup, err := New("/usr/bin/qemu-system-x86_64", "tcg").Command(spec, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	for _, e := range cmd.Env {
		if strings.HasPrefix(e, "PYRO_") || strings.Contains(e, "sekrit") {
			t.Errorf("environment leaks %q", e)
		}
	}
	if !slices.Contains(cmd.Env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin") {
		t.Errorf("no PATH in %q", cmd.Env)
	}
	if cmd.Dir != "/" {
		t.Errorf("cwd %q", cmd.Dir)
	}
	wantFiles := []string{spec.Kernel, spec.Initrd, spec.RootDisk, "socket", "socket", spec.WorkspaceDisk, spec.WorkspaceDisk}
	if len(cmd.ExtraFiles) != len(wantFiles) {
		t.Fatalf("%d extra files, want %d", len(cmd.ExtraFiles), len(wantFiles))
	}
	for i, f := range cmd.ExtraFiles {
		st, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		if wantFiles[i] == "socket" {
			if st.Mode()&os.ModeSocket == 0 {
				t.Errorf("fd %d is not a socket", 3+i)
			}
			continue
		}
		want, _ := os.Stat(wantFiles[i])
		if !os.SameFile(st, want) {
			t.Errorf("fd %d is not %s", 3+i, wantFiles[i])
		}
	}
	for _, s := range []string{vmdir.AgentSock, vmdir.QMPSock} {
		if st, err := os.Stat(spec.Dir.Path(s)); err != nil || st.Mode()&os.ModeSocket == 0 {
			t.Errorf("%s not bound: %v", s, err)
		}
	}
	if os.Geteuid() == 0 && os.Getenv(UserEnv) == "" {
		if cmd.SysProcAttr == nil || cmd.SysProcAttr.Credential == nil || cmd.SysProcAttr.Credential.Uid == 0 {
			t.Errorf("as root, qemu keeps root: %+v", cmd.SysProcAttr)
		}
	}
}

// As root, QEMU drops to the configured account unless a file it must open
// by path is closed to it, or PYRO_QEMU_USER=root.
func TestChoosePrivileges(t *testing.T) {
	if os.Geteuid() != 0 {
		if p := ChoosePrivileges("tcg", "", ""); p.Drop != nil {
			t.Fatalf("not root, yet drops: %+v", p)
		}
		t.Skip("the rest needs root")
	}
	spec := testSpec(t)
	p := ChoosePrivileges("tcg", spec.Kernel, spec.Initrd)
	if p.Drop == nil || p.Drop.UID == 0 || p.Drop.Name != "nobody" {
		t.Fatalf("want nobody: %+v", p)
	}
	if err := os.Chmod(spec.Kernel, 0o600); err != nil {
		t.Fatal(err)
	}
	if p := ChoosePrivileges("tcg", spec.Kernel, spec.Initrd); p.Drop != nil || !strings.Contains(p.Reason, "not readable by nobody") {
		t.Fatalf("closed kernel, yet: %+v", p)
	}
	t.Setenv(UserEnv, "root")
	if p := ChoosePrivileges("tcg", "", ""); p.Drop != nil {
		t.Fatalf("PYRO_QEMU_USER=root, yet: %+v", p)
	}
	t.Setenv(UserEnv, "no-such-user-here")
	if p := ChoosePrivileges("tcg", "", ""); p.Drop != nil || !strings.Contains(p.Reason, "no user") {
		t.Fatalf("unknown user, yet: %+v", p)
	}
}

// A layered workspace's transfer disk comes right after its baseline, as a
// read-only drive on its own descriptor, and what follows (the network
// socket) moves up one.
func TestTransferDiskDescriptor(t *testing.T) {
	spec := testSpec(t)
	spec.WorkspaceBase = spec.RootDisk
	spec.TransferDisk = spec.Kernel
	withNetworkFile(t, &spec)
	cmd, cleanup, err := New("/usr/bin/qemu-system-x86_64", "tcg").Command(spec, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	args := New("q", "tcg").Args(spec)
	if got := argAfter(args, "-add-fd", "fd=11"); got != "fd=11,set=4" {
		t.Errorf("transfer disk descriptor %q", got)
	}
	if got := argAfter(args, "-drive", "id=wstransfer"); !strings.Contains(got, "readonly=on") || !strings.Contains(got, "/dev/fdset/4") {
		t.Errorf("transfer drive %q", got)
	}
	if got := argAfter(args, "-netdev", ""); !strings.Contains(got, "addr.str=12") {
		t.Errorf("netdev %q, want its socket at fd 12", got)
	}
	st, _ := cmd.ExtraFiles[11-3].Stat()
	want, _ := os.Stat(spec.TransferDisk)
	if !os.SameFile(st, want) {
		t.Errorf("fd 11 is not the transfer disk")
	}
	spec.TransferDisk = ""
	if got := argAfter(New("q", "tcg").Args(spec), "-drive", "id=wstransfer"); got != "" {
		t.Errorf("no transfer disk, yet %q", got)
	}
}

// withNetworkFile gives spec a network and, as its network socket, one
// end of a pipe closed with the test.
func withNetworkFile(t *testing.T, spec *vmm.Spec) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	spec.Network = true
	spec.NetworkFile = w
}
