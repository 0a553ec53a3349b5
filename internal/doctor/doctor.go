// Package doctor checks whether this host can run pyro guests and says how
// to fix what is missing. Checks observe the real thing (a probe boot for
// KVM, not just the device node) and never change the host.
package doctor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/pyro-mcp/pyro/internal/envstore"
	"github.com/pyro-mcp/pyro/internal/initramfs"
	"github.com/pyro-mcp/pyro/internal/statedir"
	"github.com/pyro-mcp/pyro/internal/vmm"
	"github.com/pyro-mcp/pyro/internal/vmm/qemu"
)

// Status of one check.
const (
	OK   = "ok"
	Warn = "warn"
	Fail = "fail"
)

// Check is one line of the report.
type Check struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	Hint   string `json:"hint,omitempty"`
}

// Report is the whole doctor run.
type Report struct {
	OK     bool    `json:"ok"`
	Checks []Check `json:"checks"`
}

// Inputs are what the checks look at.
type Inputs struct {
	Dirs        statedir.Dirs
	Envs        *envstore.Store
	AgentBinary string
}

// Run performs every check. It never fails: problems are checks.
func Run(ctx context.Context, in Inputs) Report {
	var r Report
	add := func(c Check) { r.Checks = append(r.Checks, c) }

	qemuBin, qerr := qemu.Binary()
	if qerr != nil {
		add(Check{"qemu", Fail, qerr.Error(), "apt-get install qemu-system-x86"})
	} else {
		v, err := qemu.Version(ctx, qemuBin)
		if err != nil {
			add(Check{"qemu", Fail, err.Error(), "reinstall qemu-system-x86"})
		} else {
			add(Check{"qemu", OK, qemuBin + ": " + v, ""})
		}
		if err := qemu.CheckSandbox(ctx, qemuBin); err != nil {
			add(Check{"qemu sandbox", Fail, err.Error(), "install Debian's qemu-system-x86 (built with seccomp)"})
		} else {
			add(Check{"qemu sandbox", OK, "seccomp -sandbox " + qemu.SandboxOptions + "; environment scrubbed to PATH and LANG", ""})
		}
		out, _ := exec.CommandContext(ctx, qemuBin, "-accel", "help").Output()
		if strings.Contains(string(out), "tcg") {
			add(Check{"tcg", OK, "software emulation available (slower than KVM, always works)", ""})
		} else {
			add(Check{"tcg", Fail, "this qemu lists no tcg accelerator", "install Debian's qemu-system-x86"})
		}
	}

	installed := installedEnvironment(in.Envs)
	switch {
	case qerr != nil:
		add(Check{"kvm", Warn, "not probed: qemu is missing", ""})
	case installed == nil:
		detail := "not probed yet: needs an installed environment to boot"
		if _, err := os.Stat("/dev/kvm"); err != nil {
			detail = "/dev/kvm is missing"
		}
		add(Check{"kvm", Warn, detail, "run `pyro env pull debian:12`, then `pyro doctor` again"})
	default:
		initrd, err := initramfs.Build(in.Dirs.Cache(), in.AgentBinary, installed.ModulePaths())
		if err != nil {
			add(Check{"kvm", Warn, "not probed: " + err.Error(), ""})
			break
		}
		v := qemu.ProbeKVM(ctx, in.Dirs.Cache(), qemuBin, vmm.Spec{Kernel: installed.KernelPath(), Initrd: initrd, RootDisk: installed.RootfsPath()})
		accel := "tcg"
		if v.Usable {
			accel = "kvm"
			add(Check{"kvm", OK, v.Reason, ""})
		} else {
			add(Check{"kvm", Warn, "unusable, guests run under TCG: " + v.Reason, "enable (nested) virtualisation for this host to boot faster"})
		}
		add(userCheck(qemu.ChoosePrivileges(accel, installed.KernelPath(), initrd)))
	}

	if err := initramfs.CheckStatic(in.AgentBinary); err != nil {
		add(Check{"agent binary", Fail, err.Error(), "build pyro with CGO_ENABLED=0"})
	} else {
		add(Check{"agent binary", OK, in.AgentBinary + " is static", ""})
	}

	builder := ""
	for _, t := range []string{"mmdebstrap", "debootstrap"} {
		if p, err := exec.LookPath(t); err == nil {
			builder = p
			break
		}
	}
	if builder == "" {
		add(Check{"rootfs builder", Fail, "neither mmdebstrap nor debootstrap found", "apt-get install mmdebstrap debootstrap"})
	} else {
		add(Check{"rootfs builder", OK, builder, ""})
	}
	for _, t := range []struct{ bin, pkg string }{{"mke2fs", "e2fsprogs"}, {"lz4", "lz4"}, {"apt-get", "apt"}} {
		if p, err := exec.LookPath(t.bin); err != nil {
			add(Check{t.bin, Fail, t.bin + " not found", "apt-get install " + t.pkg})
		} else {
			add(Check{t.bin, OK, p, ""})
		}
	}

	if err := os.MkdirAll(in.Dirs.Root, 0o755); err != nil || unix.Access(in.Dirs.Root, unix.W_OK) != nil {
		add(Check{"state dir", Fail, in.Dirs.Root + " is not writable", "set PYRO_HOME to a writable directory"})
	} else {
		add(Check{"state dir", OK, in.Dirs.Root, ""})
		var st unix.Statfs_t
		if unix.Statfs(in.Dirs.Root, &st) == nil {
			free := int64(st.Bavail) * st.Bsize
			c := Check{"free disk", OK, fmt.Sprintf("%.1f GiB free", float64(free)/(1<<30)), ""}
			if free < 3<<30 {
				c.Status, c.Hint = Warn, "environments take about 1 GiB each; free some space or move PYRO_HOME"
			}
			add(c)
		}
	}

	if sts, err := in.Envs.List(); err == nil {
		var names []string
		for _, s := range sts {
			if s.Installed && s.Damaged == "" {
				names = append(names, s.Entry.Name)
			}
		}
		if len(names) == 0 {
			add(Check{"environments", Warn, "none installed", "run `pyro env pull debian:12`"})
		} else {
			add(Check{"environments", OK, strings.Join(names, ", "), ""})
		}
	}

	r.OK = true
	for _, c := range r.Checks {
		if c.Status == Fail {
			r.OK = false
		}
	}
	return r
}

// userCheck says who QEMU runs as: as root, an unprivileged account is
// expected, and keeping root is a warning with the way out.
func userCheck(p qemu.Privileges) Check {
	c := Check{"qemu user", OK, p.Reason, ""}
	if p.Drop == nil && os.Geteuid() == 0 {
		c.Status, c.Hint = Warn, "let the account in "+qemu.UserEnv+" (default nobody) read the environment files and /dev/kvm, or run pyro as a regular user"
	}
	return c
}

func installedEnvironment(s *envstore.Store) *envstore.Installed {
	sts, err := s.List()
	if err != nil {
		return nil
	}
	for _, st := range sts {
		if st.Installed && st.Damaged == "" {
			if inst, err := s.Get(st.Entry.Name); err == nil {
				return &inst
			}
		}
	}
	return nil
}
