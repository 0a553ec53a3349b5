package netpolicy

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Verdict is one decision. Reason says why a request was denied (the same
// text goes into the recorded Denial), "" when it was allowed.
type Verdict struct {
	Allowed bool
	Reason  string
}

var allow = Verdict{Allowed: true}

// Denial is one refused lookup or connection, as a model reads it to ask for
// the right allowlist entry. Host is the name asked for or the name the
// address was learned from ("" when none), Address the destination IP ("" for
// a DNS lookup), Port the destination port (0 for a lookup).
type Denial struct {
	Host    string `json:"host"`
	Address string `json:"address"`
	Port    int    `json:"port"`
	Reason  string `json:"reason"`
}

// Bounds on what a guest can make the engine hold.
const (
	// MaxDenials is how many distinct denials Denials returns per drain;
	// beyond it they are counted into one final "N more" entry.
	MaxDenials = 64
	// maxLearned bounds the addresses remembered, maxNamesPerAddr the names
	// per address (a CDN address serves many names).
	maxLearned      = 4096
	maxNamesPerAddr = 32
	// maxAddrsPerAnswer bounds what one DNS answer teaches: a guest's
	// resolver can return thousands of records, and each costs work
	// under the engine's lock, which every packet decision waits for.
	maxAddrsPerAnswer = 64
	// A learned address lives for its DNS record's TTL, at least minTTL (a
	// client connects right after resolving, even with TTL 0) and at most
	// maxTTL, so a name is re-resolved, and re-checked, at least that often.
	minTTL = 60 * time.Second
	maxTTL = 30 * time.Minute
	// hostAddrsEvery is how long the host's own addresses are cached.
	hostAddrsEvery = 5 * time.Second
)

// Option configures an Engine.
type Option func(*Engine)

// WithHostAddrs replaces how the engine learns the host's own addresses
// (default HostAddrs, i.e. every interface address of the host). The function
// is called at most every few seconds.
func WithHostAddrs(fn func() []netip.Addr) Option { return func(e *Engine) { e.hostAddrsFn = fn } }

// Engine makes the decisions of one guest's network. It is safe for
// concurrent use; Update swaps the policy atomically.
type Engine struct {
	hostAddrsFn func() []netip.Addr
	now         func() time.Time

	mu        sync.Mutex
	policy    Policy
	rules     []rule
	learned   map[netip.Addr]map[string]time.Time // address -> name -> expiry
	hostAddrs []netip.Addr
	hostAt    time.Time
	denials   []Denial
	seen      map[Denial]bool
	dropped   int
}

// NewEngine returns an engine for p, which it checks like Parse.
func NewEngine(p Policy, opts ...Option) (*Engine, error) {
	e := &Engine{hostAddrsFn: HostAddrs, now: time.Now, learned: map[netip.Addr]map[string]time.Time{}, seen: map[Denial]bool{}}
	for _, o := range opts {
		o(e)
	}
	if err := e.Update(p); err != nil {
		return nil, err
	}
	return e, nil
}

// Policy returns the policy in force.
func (e *Engine) Policy() Policy {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.policy
	p.AllowHosts = slices.Clone(p.AllowHosts)
	return p
}

// Update replaces the policy. An invalid policy changes nothing. Learned
// addresses of names the new policy no longer allows are forgotten (and
// every decision re-checks the name anyway).
func (e *Engine) Update(p Policy) error {
	p, err := p.Check()
	if err != nil {
		return err
	}
	rs, err := p.rules()
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.policy, e.rules = p, rs
	for a, names := range e.learned {
		for n := range names {
			if !p.Mode.Networked() || !e.nameAllowedLocked(n, 0) {
				delete(names, n)
			}
		}
		if len(names) == 0 {
			delete(e.learned, a)
		}
	}
	return nil
}

// hasListLocked: with no allowlist every name and public address is allowed.
func (e *Engine) hasListLocked() bool { return len(e.rules) > 0 }

// nameAllowedLocked: a name or wildcard rule admits n (on port, 0 = any).
func (e *Engine) nameAllowedLocked(n string, port int) bool {
	if !e.hasListLocked() {
		return true
	}
	for _, r := range e.rules {
		if r.matchName(n) && (port == 0 || r.portOK(port)) {
			return true
		}
	}
	return false
}

// DecideQuery decides a DNS query from the guest for name of type qtype (the
// DNS type number, used only in the reason). With an allowlist only allowed
// names are answered, with every query type; any other name gets nothing.
func (e *Engine) DecideQuery(name string, qtype uint16) Verdict {
	e.mu.Lock()
	defer e.mu.Unlock()
	n, ok := NormalizeName(name)
	host := n
	if !ok {
		host = clip(name)
	}
	switch {
	case !e.policy.Mode.Networked():
		return e.denyLocked(Denial{Host: host}, "network policy is off")
	case !ok:
		return e.denyLocked(Denial{Host: host}, "dns "+qtypeName(qtype)+" lookup refused: not a valid host name")
	case !e.nameAllowedLocked(n, 0):
		return e.denyLocked(Denial{Host: n}, "dns "+qtypeName(qtype)+" lookup refused: name not in allow_hosts")
	}
	return allow
}

// Learn records that name resolved to addrs, valid for ttl (clamped to
// [1 min, 30 min]). Only names the policy allows are learned (without an
// allowlist too, so that a later narrowing finds them and denials name
// them); a later
// resolution refreshes the expiry. Addresses keep their protected status: a
// name that resolves to 127.0.0.1 does not make loopback reachable.
func (e *Engine) Learn(name string, addrs []netip.Addr, ttl time.Duration) {
	n, ok := NormalizeName(name)
	if !ok {
		return
	}
	ttl = max(minTTL, min(ttl, maxTTL))
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.policy.Mode.Networked() || !e.nameAllowedLocked(n, 0) {
		return
	}
	now := e.now()
	exp := now.Add(ttl)
	if len(addrs) > maxAddrsPerAnswer {
		addrs = addrs[:maxAddrsPerAnswer]
	}
	for _, a := range addrs {
		a = a.Unmap().WithZone("")
		if !a.IsValid() {
			continue
		}
		names := e.learned[a]
		if names == nil {
			if len(e.learned) >= maxLearned {
				e.evictLocked(now)
			}
			names = map[string]time.Time{}
			e.learned[a] = names
		}
		if _, had := names[n]; !had && len(names) >= maxNamesPerAddr {
			delete(names, earliest(names))
		}
		names[n] = exp
	}
}

// evictLocked drops expired addresses, then, if still full, the eighth of
// the addresses whose latest names expire first: one sort per many
// insertions, never a scan of the whole table per learned address.
func (e *Engine) evictLocked(now time.Time) {
	type entry struct {
		a      netip.Addr
		latest time.Time
	}
	all := make([]entry, 0, len(e.learned))
	for a, names := range e.learned {
		for n, exp := range names {
			if !now.Before(exp) {
				delete(names, n)
			}
		}
		if len(names) == 0 {
			delete(e.learned, a)
			continue
		}
		all = append(all, entry{a, names[latestName(names)]})
	}
	if len(e.learned) < maxLearned {
		return
	}
	slices.SortFunc(all, func(x, y entry) int { return x.latest.Compare(y.latest) })
	for _, v := range all[:max(1, maxLearned/8)] {
		delete(e.learned, v.a)
	}
}

func earliest(m map[string]time.Time) string {
	var k string
	var t time.Time
	for n, exp := range m {
		if k == "" || exp.Before(t) {
			k, t = n, exp
		}
	}
	return k
}

func latestName(m map[string]time.Time) string {
	var k string
	var t time.Time
	for n, exp := range m {
		if k == "" || exp.After(t) {
			k, t = n, exp
		}
	}
	return k
}

// DecideDial decides a connection from the guest to dst (proto "tcp" or
// "udp", used only in the reason).
func (e *Engine) DecideDial(dst netip.AddrPort, proto string) Verdict {
	e.mu.Lock()
	defer e.mu.Unlock()
	a, port := dst.Addr().Unmap().WithZone(""), int(dst.Port())
	d := Denial{Address: a.String(), Port: port}
	if !a.IsValid() {
		d.Address = ""
	}
	what := proto + " connection refused: "
	if !e.policy.Mode.Networked() {
		return e.denyLocked(d, "network policy is off")
	}
	if !a.IsValid() || port == 0 {
		return e.denyLocked(d, what+"invalid destination")
	}
	d.Host = e.learnedNameLocked(a)
	if s, ok := classify(a); ok {
		if s.never {
			return e.denyLocked(d, what+s.what+" address, never reachable")
		}
		if !e.cidrAdmitsLocked(a, port, s.prefix) {
			return e.denyLocked(d, what+s.what+" address (hint: an allow_hosts CIDR entry inside "+s.prefix.String()+" opens it)")
		}
	}
	if e.isHostLocked(a) && !e.cidrAdmitsLocked(a, port, netip.PrefixFrom(a, a.BitLen())) {
		return e.denyLocked(d, what+"an address of the host itself (hint: only an allow_hosts entry naming exactly "+a.String()+" opens it)")
	}
	if !e.hasListLocked() || e.cidrAdmitsLocked(a, port, netip.Prefix{}) {
		return allow
	}
	names, expired := e.namesForLocked(a)
	for _, n := range names {
		if e.nameAllowedLocked(n, port) {
			return allow
		}
	}
	switch {
	case len(names) > 0:
		return e.denyLocked(d, what+"port "+strconv.Itoa(port)+" not in allow_hosts for "+names[0])
	case expired != "":
		d.Host = expired
		return e.denyLocked(d, what+"the address learned from "+expired+" expired (resolve the name again)")
	}
	return e.denyLocked(d, what+"address not resolved from a name in allow_hosts (direct IPs need a CIDR entry)")
}

// DecideServerName decides the TLS SNI or HTTP Host (a port suffix is
// ignored) of a connection to dst that DecideDial allowed. With an allowlist,
// a connection admitted by a name must name a name that dst was resolved
// from; one admitted by a CIDR entry may carry any name. "" means the
// connection carried none and is refused when a name is required.
func (e *Engine) DecideServerName(dst netip.AddrPort, sni string) Verdict {
	e.mu.Lock()
	defer e.mu.Unlock()
	a, port := dst.Addr().Unmap().WithZone(""), int(dst.Port())
	d := Denial{Address: a.String(), Port: port, Host: clip(sni)}
	if !e.policy.Mode.Networked() {
		return e.denyLocked(d, "network policy is off")
	}
	if !e.hasListLocked() || e.cidrAdmitsLocked(a, port, netip.Prefix{}) {
		return allow
	}
	n, ok := NormalizeName(stripPort(sni))
	if !ok {
		return e.denyLocked(d, "connection refused: missing or invalid server name (TLS SNI / HTTP Host)")
	}
	d.Host = n
	names, _ := e.namesForLocked(a)
	if slices.Contains(names, n) && e.nameAllowedLocked(n, port) {
		return allow
	}
	from := "no allowed name"
	if len(names) > 0 {
		from = strings.Join(names, ", ")
	}
	return e.denyLocked(d, "connection refused: server name "+n+" does not match the name the address was resolved from ("+from+")")
}

// cidrAdmitsLocked: a CIDR rule contains a on port and, when inside is
// valid, lies within inside (so only an entry naming a protected range opens it).
func (e *Engine) cidrAdmitsLocked(a netip.Addr, port int, inside netip.Prefix) bool {
	for _, r := range e.rules {
		if r.kind != kindCIDR || !r.prefix.Contains(a) || !r.portOK(port) {
			continue
		}
		if !inside.IsValid() || (r.prefix.Bits() >= inside.Bits() && inside.Contains(r.prefix.Addr())) {
			return true
		}
	}
	return false
}

// namesForLocked returns the unexpired names a was learned from, sorted, and
// one expired name if there are only expired ones.
func (e *Engine) namesForLocked(a netip.Addr) (names []string, expired string) {
	now := e.now()
	for n, exp := range e.learned[a] {
		if now.Before(exp) {
			names = append(names, n)
		} else {
			expired = n
		}
	}
	slices.Sort(names)
	return names, expired
}

func (e *Engine) learnedNameLocked(a netip.Addr) string {
	names, expired := e.namesForLocked(a)
	if len(names) > 0 {
		return names[0]
	}
	return expired
}

func (e *Engine) isHostLocked(a netip.Addr) bool {
	if now := e.now(); e.hostAt.IsZero() || now.Sub(e.hostAt) > hostAddrsEvery || now.Before(e.hostAt) {
		e.hostAddrs, e.hostAt = nil, now
		for _, h := range e.hostAddrsFn() {
			e.hostAddrs = append(e.hostAddrs, h.Unmap().WithZone(""))
		}
	}
	return slices.Contains(e.hostAddrs, a)
}

// Record adds a denial the caller decided on its own (a protocol the
// network stack does not carry, a dropped DNS answer).
func (e *Engine) Record(d Denial) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.recordLocked(d)
}

func (e *Engine) denyLocked(d Denial, reason string) Verdict {
	d.Reason = reason
	e.recordLocked(d)
	return Verdict{Reason: reason}
}

// recordLocked keeps distinct denials only (a retrying client would flood
// the list with one line) and at most MaxDenials of them.
func (e *Engine) recordLocked(d Denial) {
	if e.seen[d] {
		return
	}
	if len(e.denials) >= MaxDenials {
		e.dropped++
		return
	}
	e.seen[d] = true
	e.denials = append(e.denials, d)
}

// Denials returns the distinct denials since the last call and forgets them.
// When more than MaxDenials happened, the last entry says how many more.
func (e *Engine) Denials() []Denial {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := e.denials
	if e.dropped > 0 {
		out = append(out, Denial{Reason: fmt.Sprintf("%d more denials not shown", e.dropped)})
	}
	e.denials, e.seen, e.dropped = nil, map[Denial]bool{}, 0
	return out
}

// stripPort drops a ":port" from an HTTP Host value ("[::1]:8080" too).
func stripPort(s string) string {
	if h, _, err := net.SplitHostPort(s); err == nil {
		return h
	}
	return s
}

// clip bounds guest-chosen text that goes into a denial.
func clip(s string) string {
	const max = 255
	if len(s) > max {
		s = s[:max] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

func qtypeName(t uint16) string {
	switch t {
	case 1:
		return "A"
	case 5:
		return "CNAME"
	case 12:
		return "PTR"
	case 15:
		return "MX"
	case 16:
		return "TXT"
	case 28:
		return "AAAA"
	case 33:
		return "SRV"
	case 64:
		return "SVCB"
	case 65:
		return "HTTPS"
	case 255:
		return "ANY"
	}
	return "TYPE" + strconv.Itoa(int(t))
}

var hostAddrCache struct {
	sync.Mutex
	at    time.Time
	addrs []netip.Addr
}

// HostAddrs returns the addresses of the host's interfaces (cached for a
// few seconds). A guest never reaches these unless an entry names one.
func HostAddrs() []netip.Addr {
	c := &hostAddrCache
	c.Lock()
	defer c.Unlock()
	if time.Since(c.at) < hostAddrsEvery && c.addrs != nil {
		return c.addrs
	}
	ifas, err := net.InterfaceAddrs()
	var out []netip.Addr
	if err == nil {
		for _, ia := range ifas {
			if pn, ok := ia.(*net.IPNet); ok {
				if a, ok := netip.AddrFromSlice(pn.IP); ok {
					out = append(out, a.Unmap())
				}
			}
		}
	}
	c.addrs, c.at = out, time.Now()
	return out
}
