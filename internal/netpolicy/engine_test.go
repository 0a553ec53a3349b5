package netpolicy

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	typeA   = 1
	typeTXT = 16
)

var hostAddr = netip.MustParseAddr("203.0.113.77") // the test's idea of "this host"

func newEngine(t *testing.T, mode string, hosts ...string) *Engine {
	t.Helper()
	p, err := Parse(mode, hosts)
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEngine(p, WithHostAddrs(func() []netip.Addr { return []netip.Addr{hostAddr, netip.MustParseAddr("10.200.0.1")} }))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func wantDial(t *testing.T, e *Engine, dst string, allowed bool) {
	t.Helper()
	v := e.DecideDial(ap(dst), "tcp")
	if v.Allowed != allowed {
		t.Errorf("DecideDial(%s) = %+v, want allowed=%v", dst, v, allowed)
	}
	if !v.Allowed && v.Reason == "" {
		t.Errorf("DecideDial(%s) denied without a reason", dst)
	}
}

// Addresses no policy without an explicit entry may reach, whatever DNS says.
var attackerTargets = []string{
	"169.254.169.254:80",      // cloud metadata
	"[fd00:ec2::254]:80",      // AWS IPv6 metadata
	"100.100.100.200:80",      // Alibaba metadata
	"127.0.0.1:8080",          // host loopback: the MCP HTTP server
	"127.1.2.3:22",            //
	"[::1]:8080",              //
	"[::ffff:127.0.0.1]:8080", // IPv4-mapped loopback
	"[::ffff:10.0.0.1]:80",    // IPv4-mapped private
	"[::ffff:a00:1]:80",       // same, hex
	"0.0.0.0:8080",            // reaches host loopback on Linux
	"[::]:8080",               //
	"10.0.0.1:80",             //
	"172.16.5.4:80",           //
	"172.31.255.255:80",       //
	"192.168.1.1:80",          //
	"100.64.0.1:80",           //
	"[fc00::1]:80",            //
	"[fe80::1%eth0]:80",       // link-local with a zone
	"224.0.0.1:5353",          //
	"255.255.255.255:67",      //
	"[ff02::1]:80",            //
	"[64:ff9b::7f00:1]:80",    // NAT64 of 127.0.0.1
	"[2002:7f00:1::1]:80",     // 6to4 of 127.0.0.1
	"[::127.0.0.1]:80",        // IPv4-compatible
	"203.0.113.77:22",         // the host's own address
	"10.200.0.1:22",           // the host's own (private) address
}

func TestDialAlwaysDenied(t *testing.T) {
	for _, e := range []*Engine{newEngine(t, "egress"), newEngine(t, "egress+published-ports"), newEngine(t, "egress", "*.example.com", "0.0.0.0/0", "::/0")} {
		// DNS says an allowed name lives at every protected address.
		for _, dst := range attackerTargets {
			e.Learn("www.example.com", []netip.Addr{ap(dst).Addr()}, time.Hour)
		}
		for _, dst := range attackerTargets {
			wantDial(t, e, dst, false)
		}
		wantDial(t, e, "93.184.215.14:443", true) // public: open egress or 0.0.0.0/0
	}
}

func TestOffDeniesEverything(t *testing.T) {
	e := newEngine(t, "off")
	wantDial(t, e, "93.184.215.14:443", false)
	if e.DecideQuery("example.com", typeA).Allowed {
		t.Error("off answered a query")
	}
	if e.DecideServerName(ap("93.184.215.14:443"), "example.com").Allowed {
		t.Error("off allowed a server name")
	}
}

func TestExplicitCIDROpensProtected(t *testing.T) {
	e := newEngine(t, "egress", "10.200.0.2/32", "127.0.0.1:8080", "169.254.169.254", "[fd00::/8]:80", "10.200.0.0/24")
	wantDial(t, e, "10.200.0.2:80", true)
	wantDial(t, e, "10.200.0.9:80", true)
	wantDial(t, e, "10.200.0.1:22", false) // the host's own address needs an exact entry
	wantDial(t, e, "10.201.0.1:80", false)
	wantDial(t, e, "127.0.0.1:8080", true)
	wantDial(t, e, "[::ffff:127.0.0.1]:8080", true)
	wantDial(t, e, "127.0.0.1:8081", false) // the entry's port only
	wantDial(t, e, "169.254.169.254:80", true)
	wantDial(t, e, "[fd00::5]:80", true)
	wantDial(t, e, "[fd00::5]:81", false)
	wantDial(t, e, "0.0.0.0:8080", false)      // never
	wantDial(t, e, "93.184.215.14:443", false) // the allowlist has no public entry

	h := newEngine(t, "egress", "203.0.113.77:22")
	wantDial(t, h, "203.0.113.77:22", true)
	wantDial(t, h, "203.0.113.77:23", false)
}

func TestAllowlistDNS(t *testing.T) {
	e := newEngine(t, "egress", "*.example.com", "pypi.org:443", "@npm", "10.0.0.0/8")
	for _, n := range []string{"www.example.com", "A.B.Example.COM.", "pypi.org", "PYPI.ORG.", "registry.npmjs.org"} {
		if v := e.DecideQuery(n, typeA); !v.Allowed {
			t.Errorf("query %q denied: %s", n, v.Reason)
		}
	}
	for _, n := range []string{"example.com", "example.com.evil", "evilexample.com", "www.example.com.evil.org", "pypi.org.evil", "npmjs.org", "", ".", "a..b", strings.Repeat("a.", 130) + "com", "exa mple.com", "x\x00.example.com"} {
		if v := e.DecideQuery(n, typeA); v.Allowed {
			t.Errorf("query %q allowed", n)
		}
	}
	// A refused name gets no answer of any type: TXT exfiltration goes nowhere.
	if v := e.DecideQuery("c2VjcmV0.attacker.net", typeTXT); v.Allowed || !strings.Contains(v.Reason, "TXT") {
		t.Errorf("TXT for a refused name: %+v", v)
	}
	// Without an allowlist every valid name is answered.
	if v := newEngine(t, "egress").DecideQuery("anything.net", typeTXT); !v.Allowed {
		t.Errorf("open egress refused a query: %s", v.Reason)
	}
}

func TestAllowlistDial(t *testing.T) {
	e := newEngine(t, "egress", "*.example.com", "pypi.org:443", "198.51.100.0/24:8443")
	wantDial(t, e, "93.184.215.14:443", false) // a direct IP
	e.Learn("www.example.com.", addrs("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"), 5*time.Minute)
	e.Learn("pypi.org", addrs("151.101.0.223"), 5*time.Minute)
	e.Learn("evil.net", addrs("192.0.2.66"), time.Hour) // not allowed: never learned
	wantDial(t, e, "93.184.215.14:443", true)
	wantDial(t, e, "93.184.215.14:22", true) // *.example.com has no port: any
	wantDial(t, e, "[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:443", true)
	wantDial(t, e, "[::ffff:93.184.215.14]:443", true)
	wantDial(t, e, "151.101.0.223:443", true)
	wantDial(t, e, "151.101.0.223:80", false) // pypi.org:443 only
	wantDial(t, e, "192.0.2.66:443", false)
	wantDial(t, e, "198.51.100.7:8443", true)
	wantDial(t, e, "198.51.100.7:443", false)

	// A DNS answer pointing an allowed name at loopback or a private address
	// does not open it.
	e.Learn("rebind.example.com", addrs("127.0.0.1", "10.1.2.3", "169.254.169.254", "::ffff:192.168.0.1"), time.Hour)
	for _, dst := range []string{"127.0.0.1:80", "10.1.2.3:80", "169.254.169.254:80", "192.168.0.1:80"} {
		wantDial(t, e, dst, false)
	}
	// Unless a CIDR entry names that range.
	if err := e.Update(mustParse(t, "egress", "*.example.com", "10.1.0.0/16")); err != nil {
		t.Fatal(err)
	}
	wantDial(t, e, "10.1.2.3:80", true)
	wantDial(t, e, "127.0.0.1:80", false)
}

func mustParse(t *testing.T, mode string, hosts ...string) Policy {
	t.Helper()
	p, err := Parse(mode, hosts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLearnedExpire(t *testing.T) {
	e := newEngine(t, "egress", "pypi.org")
	now := time.Unix(1_000_000, 0)
	e.now = func() time.Time { return now }
	e.Learn("pypi.org", addrs("151.101.0.223"), 0) // TTL 0 still lives minTTL
	wantDial(t, e, "151.101.0.223:443", true)
	now = now.Add(minTTL + time.Second)
	wantDial(t, e, "151.101.0.223:443", false)
	if d := e.Denials(); len(d) != 1 || d[0].Host != "pypi.org" || !strings.Contains(d[0].Reason, "expired") {
		t.Fatalf("denials = %+v", d)
	}
	e.Learn("pypi.org", addrs("151.101.0.223"), 24*time.Hour) // clamped to maxTTL
	wantDial(t, e, "151.101.0.223:443", true)
	now = now.Add(maxTTL + time.Second)
	wantDial(t, e, "151.101.0.223:443", false)
}

func TestServerName(t *testing.T) {
	e := newEngine(t, "egress", "*.example.com", "pypi.org", "198.51.100.0/24")
	e.Learn("www.example.com", addrs("93.184.215.14"), time.Hour)
	e.Learn("pypi.org", addrs("151.101.0.223"), time.Hour)
	cases := []struct {
		dst, sni string
		ok       bool
	}{
		{"93.184.215.14:443", "www.example.com", true},
		{"93.184.215.14:443", "WWW.Example.com.", true},
		{"93.184.215.14:80", "www.example.com:80", true},  // an HTTP Host with a port
		{"93.184.215.14:443", "other.example.com", false}, // allowed name, but not the one this address came from
		{"93.184.215.14:443", "pypi.org", false},          // domain fronting
		{"93.184.215.14:443", "evil.net", false},
		{"93.184.215.14:443", "", false},
		{"151.101.0.223:443", "pypi.org", true},
		{"151.101.0.223:443", "www.example.com", false},
		{"198.51.100.9:443", "anything.net", true}, // admitted by a CIDR: no name to match
	}
	for _, c := range cases {
		if v := e.DecideServerName(ap(c.dst), c.sni); v.Allowed != c.ok {
			t.Errorf("DecideServerName(%s, %q) = %+v, want %v", c.dst, c.sni, v, c.ok)
		}
	}
	if v := newEngine(t, "egress").DecideServerName(ap("93.184.215.14:443"), "whatever"); !v.Allowed {
		t.Errorf("open egress checked a server name: %s", v.Reason)
	}
}

func TestUpdateNarrowsLive(t *testing.T) {
	e := newEngine(t, "egress") // open, then narrowed
	e.Learn("a.example.com", addrs("93.184.215.14"), time.Hour)
	e.Learn("b.example.org", addrs("192.0.2.10"), time.Hour)
	wantDial(t, e, "192.0.2.10:443", true)
	if err := e.Update(mustParse(t, "egress", "a.example.com")); err != nil {
		t.Fatal(err)
	}
	wantDial(t, e, "93.184.215.14:443", true)
	wantDial(t, e, "192.0.2.10:443", false)
	if e.DecideQuery("b.example.org", typeA).Allowed {
		t.Error("narrowed name still answered")
	}
	// Narrow further: the learned address of a.example.com is revoked at once.
	if err := e.Update(mustParse(t, "egress", "other.example.com")); err != nil {
		t.Fatal(err)
	}
	wantDial(t, e, "93.184.215.14:443", false)
	if e.DecideServerName(ap("93.184.215.14:443"), "a.example.com").Allowed {
		t.Error("revoked name passed the SNI check")
	}
	// Widening again does not resurrect it without a fresh resolution.
	if err := e.Update(mustParse(t, "egress", "a.example.com")); err != nil {
		t.Fatal(err)
	}
	wantDial(t, e, "93.184.215.14:443", false)
	// An invalid update changes nothing.
	if err := e.Update(Policy{Mode: "egress", AllowHosts: []string{"*.com"}}); err == nil {
		t.Fatal("invalid update accepted")
	}
	if got := e.Policy().AllowHosts; len(got) != 1 || got[0] != "a.example.com" {
		t.Fatalf("policy after a failed update = %q", got)
	}
	if err := e.Update(Policy{}); err != nil {
		t.Fatal(err)
	}
	wantDial(t, e, "93.184.215.14:443", false)
}

func TestDenialsBoundedAndDistinct(t *testing.T) {
	e := newEngine(t, "egress", "pypi.org")
	for range 10 {
		e.DecideDial(ap("192.0.2.1:443"), "tcp") // a retrying client: one line
	}
	d := e.Denials()
	if len(d) != 1 || d[0].Address != "192.0.2.1" || d[0].Port != 443 || d[0].Reason == "" {
		t.Fatalf("denials = %+v", d)
	}
	if d := e.Denials(); len(d) != 0 {
		t.Fatalf("not drained: %+v", d)
	}
	for i := range MaxDenials + 10 {
		e.DecideQuery(fmt.Sprintf("n%d.evil.net", i), typeA)
	}
	d = e.Denials()
	if len(d) != MaxDenials+1 || d[MaxDenials].Reason != "10 more denials not shown" {
		t.Fatalf("got %d denials, last %+v", len(d), d[len(d)-1])
	}
	// Guest-chosen text is bounded.
	e.DecideServerName(ap("192.0.2.1:443"), strings.Repeat("x", 10000))
	if d := e.Denials(); len(d) != 1 || len(d[0].Host) > 300 {
		t.Fatalf("unbounded host in denial: %d", len(d[0].Host))
	}
}

func TestLearnBounded(t *testing.T) {
	e := newEngine(t, "egress", "*.example.com")
	for i := range maxLearned + 100 {
		a := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
		e.Learn(fmt.Sprintf("h%d.example.com", i), []netip.Addr{a}, time.Hour)
	}
	for i := range maxNamesPerAddr + 10 {
		e.Learn(fmt.Sprintf("n%d.example.com", i), addrs("192.0.2.1"), time.Hour)
	}
	if len(e.learned) > maxLearned || len(e.learned[netip.MustParseAddr("192.0.2.1")]) > maxNamesPerAddr {
		t.Fatalf("learned %d addresses, %d names for one", len(e.learned), len(e.learned[netip.MustParseAddr("192.0.2.1")]))
	}
}

func TestConcurrent(t *testing.T) {
	e := newEngine(t, "egress", "*.example.com")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				e.Learn("a.example.com", addrs(fmt.Sprintf("192.0.2.%d", j%200)), time.Minute)
				e.DecideDial(ap(fmt.Sprintf("192.0.2.%d:443", j%200)), "tcp")
				e.DecideServerName(ap("192.0.2.1:443"), "a.example.com")
				if j%50 == 0 {
					_ = e.Update(mustParse(t, "egress", "*.example.com", fmt.Sprintf("10.%d.0.0/16", i)))
				}
				e.Denials()
			}
		})
	}
	wg.Wait()
}

// TestLearnBoundsOneAnswer plays a guest whose resolver answers with
// thousands of records into a full table: one answer teaches at most
// maxAddrsPerAnswer addresses, and eviction keeps the table bounded.
func TestLearnBoundsOneAnswer(t *testing.T) {
	e := newEngine(t, "egress")
	for i := range maxLearned {
		e.Learn(fmt.Sprintf("h%d.example.com", i), []netip.Addr{netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})}, time.Hour)
	}
	flood := make([]netip.Addr, 4000)
	for i := range flood {
		flood[i] = netip.AddrFrom4([4]byte{203, 0, byte(i >> 8), byte(i)})
	}
	e.Learn("flood.example.com", flood, time.Hour)
	got := 0
	for a := range e.learned {
		if a.As4()[0] == 203 {
			got++
		}
	}
	if got != maxAddrsPerAnswer || len(e.learned) > maxLearned {
		t.Fatalf("one answer taught %d addresses (want %d), table holds %d", got, maxAddrsPerAnswer, len(e.learned))
	}
}
