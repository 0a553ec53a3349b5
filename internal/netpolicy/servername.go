package netpolicy

import "net/netip"

// NeedsServerName reports whether a connection to dst that DecideDial
// allowed must still name an allowed server (DecideServerName): only with an
// allowlist, and not when a CIDR entry admits dst (DecideServerName allows
// those whatever they carry). The network stack asks first, so it reads the
// first bytes of only those connections, and a protocol whose server speaks
// first (SSH, SMTP) to a CIDR-admitted address is not held up waiting for
// bytes the client will not send.
func (e *Engine) NeedsServerName(dst netip.AddrPort) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	a := dst.Addr().Unmap().WithZone("")
	return e.policy.Mode.Networked() && e.hasListLocked() && !e.cidrAdmitsLocked(a, int(dst.Port()), netip.Prefix{})
}
