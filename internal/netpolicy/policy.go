// Package netpolicy decides what a networked guest may reach. It is pure Go
// and owns no sockets: the supervisor's userspace network stack
// (internal/netstack) asks it about every DNS query, every outbound
// connection and every TLS server name / HTTP Host, and reports nothing on
// its own; the SDK, CLI and MCP server use it to validate what a caller asks
// for before anything reaches a supervisor.
//
// # Policies
//
// A Policy is a Mode plus an optional allowlist:
//
//	off                     no NIC at all (the default)
//	egress                  outbound connections
//	egress+published-ports  egress, and host-loopback ports forwarded in
//
// Allowlist entries (Parse normalises them: lower case, no trailing dot):
//
//	NAME[:PORT]       pypi.org, pypi.org:443
//	*.SUFFIX[:PORT]   *.githubusercontent.com (subdomains only, not the suffix itself)
//	CIDR[:PORT]       203.0.113.0/24, 10.0.0.7 (a bare address is a /32 or /128),
//	                  [fd00::/8]:8080 (brackets when an IPv6 CIDR has a port)
//	@PRESET           @pypi @npm @github @debian (kept as written, expanded to names)
//
// # Decisions (Engine)
//
//   - Always denied, in every mode: unspecified (0.0.0.0/8, ::), multicast,
//     broadcast/reserved, NAT64/6to4/Teredo translation prefixes; denied unless a CIDR
//     entry lies inside them: loopback, link-local (cloud metadata), private ranges
//     (10/8, 172.16/12, 192.168/16, 100.64/10, 198.18/15, fc00::/7), and the host's own
//     addresses (which need an entry naming exactly that address). A broad entry such as
//     0.0.0.0/0 never unlocks them. IPv4-mapped IPv6 addresses are judged as IPv4.
//   - Without an allowlist: every query is answered and every other address is reachable.
//   - With an allowlist: DNS answers only allowed names (any query type; a refused name
//     gets no answer of any type, so TXT lookups cannot exfiltrate), connections go only
//     to addresses an allowed name resolved to (Learn, expiring with the record's TTL,
//     refreshed by every resolution) or to an allowed CIDR, on the entry's port if it
//     has one, and the TLS SNI / HTTP Host of a connection to a learned address must be a
//     name that address was learned from.
//
// Every refusal is recorded as a Denial; Denials drains them (bounded).
// Update swaps the policy atomically: a narrowing revokes learned addresses at
// once, since every decision re-checks the name it was learned from.
package netpolicy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Mode is the network policy's kind.
type Mode string

// The modes, in widening order.
const (
	Off             Mode = "off"
	Egress          Mode = "egress"
	EgressPublished Mode = "egress+published-ports"
)

// Modes lists the modes in widening order (for enums in schemas and help).
func Modes() []string { return []string{string(Off), string(Egress), string(EgressPublished)} }

func (m Mode) rank() int {
	switch m {
	case Off, "":
		return 0
	case Egress:
		return 1
	case EgressPublished:
		return 2
	}
	return -1
}

// Networked reports whether the guest gets a NIC.
func (m Mode) Networked() bool { return m.rank() > 0 }

// Publishes reports whether the mode allows published ports.
func (m Mode) Publishes() bool { return m == EgressPublished }

// ParseMode validates a mode name; "" is Off.
func ParseMode(s string) (Mode, error) {
	m := Mode(strings.ToLower(strings.TrimSpace(s)))
	if m == "" {
		return Off, nil
	}
	if m.rank() < 0 {
		return "", errdefs.New(errdefs.ErrInvalidArgument, "use one of "+strings.Join(Modes(), ", "),
			"unknown network policy %q", s)
	}
	return m, nil
}

// Limits on an allowlist, so a model cannot hand the engine unbounded work.
const (
	MaxEntries     = 256
	maxEntryLength = 300
)

// Policy is what a VM or workspace is allowed on the network. The zero value
// is Off (Parse and Normalized spell it "off"). AllowHosts holds entries as Parse normalised them (presets as
// written); an empty list means open egress.
type Policy struct {
	Mode       Mode     `json:"network_policy"`
	AllowHosts []string `json:"allow_hosts,omitempty"`
}

// Parse validates and normalises a policy. mode "" is Off; an allowlist needs
// a networked mode. Duplicates are dropped, order is kept.
func Parse(mode string, allowHosts []string) (Policy, error) {
	m, err := ParseMode(mode)
	if err != nil {
		return Policy{}, err
	}
	p := Policy{Mode: m}
	if len(allowHosts) == 0 {
		return p, nil
	}
	if !m.Networked() {
		return Policy{}, errdefs.New(errdefs.ErrInvalidArgument, "add --network-policy egress (SDK/MCP network_policy)",
			"allow_hosts needs a networked policy, not %q", m)
	}
	if len(allowHosts) > MaxEntries {
		return Policy{}, errdefs.New(errdefs.ErrInvalidArgument, "use wildcards (*.example.com) or CIDRs to shorten it",
			"allow_hosts has %d entries, at most %d allowed", len(allowHosts), MaxEntries)
	}
	for _, e := range allowHosts {
		norm, _, err := parseEntry(e)
		if err != nil {
			return Policy{}, err
		}
		if !slices.Contains(p.AllowHosts, norm) {
			p.AllowHosts = append(p.AllowHosts, norm)
		}
	}
	return p, nil
}

// Check re-validates a policy that did not come from Parse (a record, a
// request body) and returns it normalised.
func (p Policy) Check() (Policy, error) { return Parse(string(p.Mode), p.AllowHosts) }

// Normalized returns p with an empty mode spelled Off, for display.
func (p Policy) Normalized() Policy {
	if p.Mode == "" {
		p.Mode = Off
	}
	return p
}

// String is the policy as a person reads it: "egress (pypi.org, @github)".
func (p Policy) String() string {
	p = p.Normalized()
	if len(p.AllowHosts) == 0 {
		return string(p.Mode)
	}
	return fmt.Sprintf("%s (%s)", p.Mode, strings.Join(p.AllowHosts, ", "))
}

// rules expands the allowlist; p must have passed Parse or Check.
func (p Policy) rules() ([]rule, error) {
	var out []rule
	for _, e := range p.AllowHosts {
		_, rs, err := parseEntry(e)
		if err != nil {
			return nil, err
		}
		out = append(out, rs...)
	}
	return out, nil
}

// Within reports whether p asks for no more than max: its mode is not wider,
// and when max has an allowlist, p has one too and each of p's rules is
// covered by one of max's (a name by the same name or a wildcard above it, a
// wildcard by a wildcard at or above it, a CIDR by a CIDR containing it, a
// port by the same port or an entry without one). When max has no
// allowlist, p may not open a protected range (loopback, private, link-local,
// this host's addresses) with a CIDR: only an operator's max can open those.
// The error is invalid_argument and names max.
func (p Policy) Within(max Policy) error {
	p, max = p.Normalized(), max.Normalized()
	refuse := func(format string, args ...any) error {
		return errdefs.New(errdefs.ErrInvalidArgument, "this server allows at most "+max.String()+"; ask within it or have the operator widen --network-policy-max/--allow-host-max",
			format, args...)
	}
	if p.Mode.rank() < 0 || max.Mode.rank() < 0 {
		return errdefs.New(errdefs.ErrInvalidArgument, "use one of "+strings.Join(Modes(), ", "), "unknown network policy")
	}
	if p.Mode.rank() > max.Mode.rank() {
		return refuse("network policy %q is wider than the maximum %q", p.Mode, max.Mode)
	}
	prs, err := p.rules()
	if err != nil {
		return err
	}
	mrs, err := max.rules()
	if err != nil {
		return err
	}
	if len(mrs) == 0 {
		for i, r := range prs {
			if r.kind == kindCIDR && unlocksProtected(r, HostAddrs()) {
				return refuse("allow_hosts entry %q names a protected range (loopback, private, link-local or host)", entryOf(p, prs, i))
			}
		}
		return nil
	}
	if p.Mode.Networked() && len(prs) == 0 {
		return refuse("an open allowlist is wider than the maximum allowlist")
	}
	for i, r := range prs {
		if !slices.ContainsFunc(mrs, func(m rule) bool { return m.covers(r) }) {
			return refuse("allow_hosts entry %q is outside the maximum allowlist", entryOf(p, prs, i))
		}
	}
	return nil
}

// entryOf names the entry rule i came from (presets expand to several rules).
func entryOf(p Policy, rs []rule, i int) string {
	if rs[i].from != "" {
		return rs[i].from
	}
	return rs[i].String()
}
