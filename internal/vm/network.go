package vm

import (
	"context"
	"fmt"
	"net"
	"os"
	"syscall"

	"github.com/pyro-mcp/pyro/internal/errdefs"
	"github.com/pyro-mcp/pyro/internal/netpolicy"
	"github.com/pyro-mcp/pyro/internal/netstack"
	"github.com/pyro-mcp/pyro/internal/vmm/qemu"
)

// StepStartNetwork starts the guest's userspace network (a networked VM
// only), before the VMM, which gets the other end of its socket.
const StepStartNetwork = "start network"

// DNSUpstreamEnv names the DNS server ("IP:PORT") the guest network sends
// the lookups its policy admits to, instead of the host's first
// /etc/resolv.conf nameserver. Tests point it at a server on loopback.
const DNSUpstreamEnv = "PYRO_DNS_UPSTREAM"

// policy is the network policy c asks for: Network alone means egress.
func (c Config) policy() netpolicy.Policy {
	p := c.NetworkPolicy
	if c.Network && !p.Mode.Networked() {
		p = netpolicy.Policy{Mode: netpolicy.Egress}
	}
	return p
}

// slirpBench reports the benchmark-only slirp reference (qemu.SlirpEnv).
func slirpBench() bool { return os.Getenv(qemu.SlirpEnv) == "1" }

// startNetwork builds the stack with the policy's engine and attaches it to
// one end of a socketpair; the VMM gets the other (spec.NetworkFile).
func startNetwork(_ context.Context, d Deps, c Config, v *VM) error {
	if !c.Network {
		return nil
	}
	if slirpBench() {
		// The benchmark's reference decides nothing: it is only for open
		// egress, never for a policy that promises more.
		if p := c.policy(); len(p.AllowHosts) > 0 || p.Mode.Publishes() {
			return errdefs.New(errdefs.ErrFailedPrecondition, "unset "+qemu.SlirpEnv,
				"%s=1 (benchmark reference, QEMU slirp) cannot enforce network policy %s", qemu.SlirpEnv, p)
		}
		return nil
	}
	eng, err := netpolicy.NewEngine(c.policy())
	if err != nil {
		return err
	}
	up := c.DNSUpstream
	if up == "" {
		up = os.Getenv(DNSUpstreamEnv)
	}
	st, err := netstack.New(netstack.Config{Engine: eng, Upstream: up, Logger: d.Logger.With("vm_id", v.ID)})
	if err != nil {
		return err
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		st.Close()
		return fmt.Errorf("network socketpair: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "netstack"), os.NewFile(uintptr(fds[1]), "vmm-net")
	conn, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		theirs.Close()
		st.Close()
		return fmt.Errorf("network socket: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := st.Attach(conn); err != nil {
			d.Logger.Warn("guest network ended", "vm_id", v.ID, "err", err)
		}
	}()
	v.Net, v.netFile = st, theirs
	v.onClose(func(context.Context) error {
		theirs.Close()
		err := st.Close()
		<-done
		return err
	})
	return nil
}
