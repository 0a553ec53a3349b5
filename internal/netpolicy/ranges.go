package netpolicy

import "net/netip"

// span is a range of addresses the guest must not reach by default.
type span struct {
	prefix netip.Prefix
	what   string
	// never: no allowlist entry opens it (dialing 0.0.0.0 reaches the
	// host's loopback on Linux; multicast and translation prefixes have
	// no single destination to name).
	never bool
}

func mustSpan(s, what string, never bool) span {
	return span{netip.MustParsePrefix(s), what, never}
}

// protected is checked in order; the first match decides. IPv4-mapped IPv6
// addresses are unmapped before the check, so ::ffff:127.0.0.1 is loopback.
var protected = []span{
	mustSpan("0.0.0.0/8", "unspecified", true),
	mustSpan("127.0.0.0/8", "loopback", false),
	mustSpan("169.254.0.0/16", "link-local (cloud metadata)", false),
	mustSpan("10.0.0.0/8", "private", false),
	mustSpan("172.16.0.0/12", "private", false),
	mustSpan("192.168.0.0/16", "private", false),
	mustSpan("100.64.0.0/10", "shared (carrier NAT)", false),
	mustSpan("198.18.0.0/15", "benchmarking", false),
	mustSpan("192.0.0.0/24", "reserved", false),
	mustSpan("224.0.0.0/4", "multicast", true),
	mustSpan("240.0.0.0/4", "reserved or broadcast", true),
	mustSpan("::/128", "unspecified", true),
	mustSpan("::1/128", "loopback", false),
	mustSpan("::/96", "IPv4-compatible", true),
	mustSpan("64:ff9b::/96", "NAT64", true),
	mustSpan("64:ff9b:1::/48", "NAT64", true),
	mustSpan("2002::/16", "6to4", true),
	mustSpan("2001::/32", "Teredo", true),
	mustSpan("fe80::/10", "link-local", false),
	mustSpan("fc00::/7", "private (unique local)", false),
	mustSpan("ff00::/8", "multicast", true),
}

// classify returns the protected span a holds, if any. a must be unmapped.
func classify(a netip.Addr) (span, bool) {
	for _, s := range protected {
		if s.prefix.Contains(a) {
			return s, true
		}
	}
	return span{}, false
}

// unlocksProtected reports whether a CIDR rule would open a protected span
// (it lies inside one) or one of hostAddrs (it is exactly that address): what
// Engine.DecideDial admits. Broader rules (0.0.0.0/0) open nothing protected.
func unlocksProtected(r rule, hostAddrs []netip.Addr) bool {
	for _, s := range protected {
		if !s.never && s.prefix.Bits() <= r.prefix.Bits() && s.prefix.Contains(r.prefix.Addr()) {
			return true
		}
	}
	if r.prefix.IsSingleIP() {
		for _, h := range hostAddrs {
			if h.Unmap().WithZone("") == r.prefix.Addr() {
				return true
			}
		}
	}
	return false
}

// Protected reports whether a is in a range the guest never reaches without
// an entry naming it (host addresses aside, which only an Engine knows), so
// a DNS proxy can say why it dropped an answer.
func Protected(a netip.Addr) bool {
	_, ok := classify(a.Unmap().WithZone(""))
	return ok
}
