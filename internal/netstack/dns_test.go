package netstack

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/pyro-mcp/pyro/internal/netpolicy"
)

// rawQuery sends q from the guest to the stack's resolver and returns the
// answer's header.
func (e *env) rawQuery(q []byte) dnsmessage.Header {
	e.t.Helper()
	c, err := gonet.DialUDP(e.guest, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(DNS.As4()), Port: 53}, ipv4.ProtocolNumber)
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(q); err != nil {
		e.t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		e.t.Fatalf("no answer: %v", err)
	}
	var p dnsmessage.Parser
	h, err := p.Start(buf[:n])
	if err != nil {
		e.t.Fatal(err)
	}
	return h
}

// TestDNSOnlyPlainQueriesLeave plays a guest that smuggles data to the
// upstream resolver through an allowed name: an UPDATE carrying records,
// a QUERY stuffed with answer/authority/additional records, an EDNS
// option, another class. Only a plain one-question IN query, rebuilt from
// its fields, goes upstream; the rest is answered locally.
func TestDNSOnlyPlainQueriesLeave(t *testing.T) {
	names := map[string]netip.Addr{"allowed.test": netip.MustParseAddr("203.0.113.7")}
	e := newEnv(t, netpolicy.Policy{Mode: netpolicy.Egress, AllowHosts: []string{"allowed.test"}}, &world{}, names)
	const secret = "EXFILTRATED-SECRET"
	q := dnsmessage.Question{Name: dnsmessage.MustNewName("allowed.test."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}
	txt := func(b *dnsmessage.Builder) error {
		return b.TXTResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 1}, dnsmessage.TXTResource{TXT: []string{secret}})
	}
	build := func(h dnsmessage.Header, qq dnsmessage.Question, extra func(b *dnsmessage.Builder) error) []byte {
		b := dnsmessage.NewBuilder(nil, h)
		b.StartQuestions()
		b.Question(qq)
		if extra != nil {
			if err := extra(&b); err != nil {
				t.Fatal(err)
			}
		}
		m, err := b.Finish()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, c := range []struct {
		name string
		msg  []byte
		want dnsmessage.RCode
	}{
		{"update", build(dnsmessage.Header{ID: 1, OpCode: 5}, dnsmessage.Question{Name: q.Name, Type: dnsmessage.TypeSOA, Class: dnsmessage.ClassINET},
			func(b *dnsmessage.Builder) error { b.StartAuthorities(); return txt(b) }), dnsmessage.RCodeNotImplemented},
		{"notify", build(dnsmessage.Header{ID: 2, OpCode: 4}, q, nil), dnsmessage.RCodeNotImplemented},
		{"answers", build(dnsmessage.Header{ID: 3, RecursionDesired: true}, q,
			func(b *dnsmessage.Builder) error { b.StartAnswers(); return txt(b) }), dnsmessage.RCodeFormatError},
		{"authorities", build(dnsmessage.Header{ID: 4, RecursionDesired: true}, q,
			func(b *dnsmessage.Builder) error { b.StartAuthorities(); return txt(b) }), dnsmessage.RCodeFormatError},
		{"additionals", build(dnsmessage.Header{ID: 5, RecursionDesired: true}, q,
			func(b *dnsmessage.Builder) error { b.StartAdditionals(); return txt(b) }), dnsmessage.RCodeFormatError},
		{"chaos", build(dnsmessage.Header{ID: 6, RecursionDesired: true}, dnsmessage.Question{Name: q.Name, Type: dnsmessage.TypeTXT, Class: dnsmessage.ClassCHAOS}, nil),
			dnsmessage.RCodeNotImplemented},
		{"edns-option", build(dnsmessage.Header{ID: 7, RecursionDesired: true}, q, func(b *dnsmessage.Builder) error {
			var rh dnsmessage.ResourceHeader
			rh.SetEDNS0(1232, dnsmessage.RCodeSuccess, true)
			b.StartAdditionals()
			return b.OPTResource(rh, dnsmessage.OPTResource{Options: []dnsmessage.Option{{Code: 65001, Data: []byte(secret)}}})
		}), dnsmessage.RCodeSuccess},
	} {
		t.Run(c.name, func(t *testing.T) {
			if h := e.rawQuery(c.msg); h.RCode != c.want || !h.Response {
				t.Errorf("rcode %v, want %v", h.RCode, c.want)
			}
		})
	}
	raw := e.dns.Raw()
	if len(raw) != 1 {
		t.Errorf("the upstream got %d messages, want only the EDNS query", len(raw))
	}
	for _, m := range raw {
		var p dnsmessage.Parser
		h, err := p.Start(m)
		if bytes.Contains(m, []byte(secret)) || err != nil || h.OpCode != 0 {
			t.Errorf("the upstream got %q", m)
		}
	}
	if rc, addrs := e.lookup("allowed.test", dnsmessage.TypeA); rc != dnsmessage.RCodeSuccess || len(addrs) != 1 {
		t.Errorf("a plain query: %v %v", rc, addrs)
	}
}
