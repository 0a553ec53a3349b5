package netpolicy

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

type ruleKind int

const (
	kindName     ruleKind = iota // exact name
	kindWildcard                 // *.suffix: strict subdomains of suffix
	kindCIDR
)

// rule is one expanded allowlist entry.
type rule struct {
	kind   ruleKind
	name   string       // kindName: the name; kindWildcard: the suffix without "*."
	prefix netip.Prefix // kindCIDR, masked, IPv4 for IPv4-mapped input
	port   int          // 0: any port
	from   string       // the preset it came from, "" when written directly
}

func (r rule) String() string {
	var s string
	switch r.kind {
	case kindName:
		s = r.name
	case kindWildcard:
		s = "*." + r.name
	case kindCIDR:
		s = r.prefix.String()
		if r.port != 0 && r.prefix.Addr().Is6() {
			return "[" + s + "]:" + strconv.Itoa(r.port)
		}
	}
	if r.port != 0 {
		s += ":" + strconv.Itoa(r.port)
	}
	return s
}

func (r rule) portOK(port int) bool { return r.port == 0 || r.port == port }

// matchName reports whether the normalised name n falls under a name rule.
func (r rule) matchName(n string) bool {
	switch r.kind {
	case kindName:
		return n == r.name
	case kindWildcard:
		return strings.HasSuffix(n, "."+r.name)
	}
	return false
}

// covers reports whether r admits everything o admits (for Within).
func (r rule) covers(o rule) bool {
	if r.port != 0 && r.port != o.port {
		return false
	}
	switch r.kind {
	case kindName:
		return o.kind == kindName && o.name == r.name
	case kindWildcard:
		return (o.kind == kindName || o.kind == kindWildcard) &&
			(o.name == r.name && o.kind == kindWildcard || strings.HasSuffix(o.name, "."+r.name))
	case kindCIDR:
		return o.kind == kindCIDR && o.prefix.Addr().Is4() == r.prefix.Addr().Is4() &&
			o.prefix.Bits() >= r.prefix.Bits() && r.prefix.Contains(o.prefix.Addr())
	}
	return false
}

func badEntry(entry, why string) error {
	return errdefs.New(errdefs.ErrInvalidArgument,
		"use NAME, *.SUFFIX or CIDR with an optional :PORT (pypi.org, *.github.com:443, 10.0.0.0/8), or a preset: "+strings.Join(PresetNames(), " "),
		"allow_hosts entry %q: %s", entry, why)
}

// parseEntry validates one allowlist entry and returns its normal form and
// the rules it expands to.
func parseEntry(entry string) (string, []rule, error) {
	s := strings.ToLower(strings.TrimSpace(entry))
	if s == "" {
		return "", nil, badEntry(entry, "empty")
	}
	if len(s) > maxEntryLength {
		return "", nil, badEntry(entry[:40]+"...", "longer than "+strconv.Itoa(maxEntryLength)+" characters")
	}
	if strings.HasPrefix(s, "@") {
		names, ok := presets[s[1:]]
		if !ok {
			return "", nil, badEntry(entry, "unknown preset")
		}
		rs := make([]rule, 0, len(names))
		for _, n := range names {
			_, r, err := parseHostPort(n, n)
			if err != nil {
				return "", nil, err // a broken preset table; tested
			}
			r.from = s
			rs = append(rs, r)
		}
		return s, rs, nil
	}
	norm, r, err := parseHostPort(entry, s)
	if err != nil {
		return "", nil, err
	}
	return norm, []rule{r}, nil
}

func parseHostPort(entry, s string) (string, rule, error) {
	host, port, err := splitPort(entry, s)
	if err != nil {
		return "", rule{}, err
	}
	r := rule{port: port}
	switch {
	case strings.HasPrefix(host, "*."):
		n, err := normName(host[2:])
		if err != nil {
			return "", rule{}, badEntry(entry, err.Error())
		}
		if !strings.Contains(n, ".") {
			return "", rule{}, badEntry(entry, "a wildcard needs at least two labels after *. (a whole top-level domain is too wide)")
		}
		r.kind, r.name = kindWildcard, n
	case strings.Contains(host, "*"):
		return "", rule{}, badEntry(entry, "a wildcard is only allowed as a leading *.")
	case strings.Contains(host, "/") || strings.Contains(host, ":") || looksNumeric(host):
		pfx, err := parsePrefix(host)
		if err != nil {
			return "", rule{}, badEntry(entry, err.Error())
		}
		r.kind, r.prefix = kindCIDR, pfx
	default:
		n, err := normName(host)
		if err != nil {
			return "", rule{}, badEntry(entry, err.Error())
		}
		r.kind, r.name = kindName, n
	}
	return r.String(), r, nil
}

// splitPort separates an optional :PORT. An IPv6 CIDR with a port is written
// in brackets; without brackets, more than one colon means there is no port.
func splitPort(entry, s string) (string, int, error) {
	host, portStr := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return "", 0, badEntry(entry, "missing ]")
		}
		host, rest := s[1:end], s[end+1:]
		if rest == "" {
			return host, 0, nil
		}
		if !strings.HasPrefix(rest, ":") {
			return "", 0, badEntry(entry, "unexpected text after ]")
		}
		p, err := parsePort(entry, rest[1:])
		return host, p, err
	}
	if strings.Count(s, ":") == 1 {
		i := strings.IndexByte(s, ':')
		host, portStr = s[:i], s[i+1:]
		p, err := parsePort(entry, portStr)
		return host, p, err
	}
	return host, 0, nil
}

func parsePort(entry, s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || s == "" || s[0] == '+' || s[0] == '-' {
		return 0, badEntry(entry, "port must be a number")
	}
	if p < 1 || p > 65535 {
		return 0, badEntry(entry, "port out of range 1-65535")
	}
	return p, nil
}

// looksNumeric catches dotted numbers ("10.0.0.1", "1.2.3") that must parse
// as addresses rather than pass as names.
func looksNumeric(s string) bool {
	last := s[strings.LastIndexByte(s, '.')+1:]
	if last == "" {
		return false
	}
	for _, c := range last {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func parsePrefix(s string) (netip.Prefix, error) {
	var pfx netip.Prefix
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return pfx, errString("not a valid CIDR")
		}
		if p.Masked() != p {
			return pfx, errString("host bits set (write " + p.Masked().String() + ")")
		}
		pfx = p
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return pfx, errString("not a valid address or CIDR")
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if pfx.Addr().Is4In6() {
		if pfx.Bits() < 96 {
			return netip.Prefix{}, errString("an IPv4-mapped prefix must be /96 or longer (write it as IPv4)")
		}
		pfx = netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()-96)
	}
	return pfx, nil
}

type errString string

func (e errString) Error() string { return string(e) }

// maxNameLength is DNS's limit on a name's text form.
const maxNameLength = 253

// NormalizeName lowercases a DNS name and drops one trailing dot; ok is false
// when it is not a valid host name (labels of 1-63 letters, digits, '-' or
// '_', not starting or ending with '-', at most 253 characters).
func NormalizeName(name string) (string, bool) {
	n, err := normName(name)
	return n, err == nil
}

func normName(name string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(name, "."))
	if n == "" {
		return "", errString("empty name")
	}
	if len(n) > maxNameLength {
		return "", errString("name longer than 253 characters")
	}
	for label := range strings.SplitSeq(n, ".") {
		if label == "" || len(label) > 63 {
			return "", errString("each label must be 1-63 characters")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return "", errString("a label may not start or end with '-'")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", errString("invalid character " + strconv.QuoteRune(rune(c)))
			}
		}
	}
	return n, nil
}
