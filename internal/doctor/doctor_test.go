package doctor

import (
	"os"
	"testing"

	"github.com/pyro-mcp/pyro/internal/vmm/qemu"
)

// doctor says whom QEMU runs as; as root, keeping root is a warning with a
// way out (#12.12).
func TestUserCheck(t *testing.T) {
	c := userCheck(qemu.Privileges{Drop: &qemu.Account{Name: "nobody", UID: 65534}, Reason: "qemu runs as nobody (uid 65534)"})
	if c.Name != "qemu user" || c.Status != OK || c.Detail != "qemu runs as nobody (uid 65534)" {
		t.Fatalf("%+v", c)
	}
	c = userCheck(qemu.Privileges{Reason: "/dev/kvm (mode 600, gid 0) is open to root only; qemu runs as root"})
	if os.Geteuid() == 0 && (c.Status != Warn || c.Hint == "") {
		t.Fatalf("root keeps root, yet %+v", c)
	}
	if os.Geteuid() != 0 && c.Status != OK {
		t.Fatalf("not root: %+v", c)
	}
}
