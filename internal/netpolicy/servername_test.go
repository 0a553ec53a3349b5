package netpolicy

import (
	"net/netip"
	"testing"
)

func TestNeedsServerName(t *testing.T) {
	for _, c := range []struct {
		hosts []string
		dst   string
		want  bool
	}{
		{nil, "203.0.113.7:443", false},                                            // open egress
		{[]string{"pypi.org"}, "203.0.113.7:443", true},                            // a name-bound address
		{[]string{"pypi.org", "203.0.113.0/24"}, "203.0.113.7:22", false},          // a CIDR admits it
		{[]string{"pypi.org", "203.0.113.0/24:443"}, "203.0.113.7:22", true},       // not on that port
		{[]string{"pypi.org", "203.0.113.0/24"}, "[::ffff:203.0.113.7]:22", false}, // mapped
	} {
		e, err := NewEngine(Policy{Mode: Egress, AllowHosts: c.hosts})
		if err != nil {
			t.Fatal(err)
		}
		if got := e.NeedsServerName(netip.MustParseAddrPort(c.dst)); got != c.want {
			t.Errorf("%v %s: %v, want %v", c.hosts, c.dst, got, c.want)
		}
		if len(e.Denials()) != 0 {
			t.Errorf("NeedsServerName recorded a denial")
		}
	}
}
