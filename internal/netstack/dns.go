package netstack

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// DNS bounds: a guest query is at most maxQuery bytes (larger ones are
// dropped), the upstream gets upstreamTimeout per exchange, and a TCP
// client at most dnsTCPIdle between queries.
const (
	maxQuery        = 4096
	upstreamTimeout = 4 * time.Second
	dnsTCPIdle      = 10 * time.Second
	// plainUDPSize is what a query without EDNS may get back over UDP.
	plainUDPSize = 512
)

// serveDNS answers the guest's resolver address on UDP and TCP port 53.
func (st *Stack) serveDNS() error {
	addr := fullAddr(DNS, 53)
	uc, err := gonet.DialUDP(st.s, &addr, nil, ipv4.ProtocolNumber)
	if err != nil {
		return fmt.Errorf("netstack: dns udp: %w", err)
	}
	ln, err := gonet.ListenTCP(st.s, addr, ipv4.ProtocolNumber)
	if err != nil {
		uc.Close()
		return fmt.Errorf("netstack: dns tcp: %w", err)
	}
	st.wg.Add(2)
	go func() {
		defer st.wg.Done()
		<-st.ctx.Done()
		uc.Close()
		ln.Close()
	}()
	go func() {
		defer st.wg.Done()
		buf := make([]byte, maxQuery+1)
		for {
			n, from, err := uc.ReadFrom(buf)
			if err != nil {
				if st.ctx.Err() != nil {
					return
				}
				continue
			}
			if n > maxQuery || !acquire(st.dnsSlots) {
				continue // dropped: the guest's resolver retries
			}
			q := append([]byte(nil), buf[:n]...)
			st.wg.Add(1)
			go func() {
				defer st.wg.Done()
				defer release(st.dnsSlots)
				if reply := st.resolve(q, true); reply != nil {
					_, _ = uc.WriteTo(reply, from)
				}
			}()
		}
	}()
	st.wg.Add(1)
	go func() {
		defer st.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !acquire(st.dnsSlots) {
				c.Close()
				continue
			}
			st.wg.Add(1)
			go func() {
				defer st.wg.Done()
				defer release(st.dnsSlots)
				defer c.Close()
				st.serveDNSConn(c)
			}()
		}
	}()
	return nil
}

// serveDNSConn answers length-prefixed queries on one TCP connection.
func (st *Stack) serveDNSConn(c net.Conn) {
	r := bufio.NewReader(c)
	for {
		_ = c.SetDeadline(time.Now().Add(dnsTCPIdle))
		var l [2]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(l[:]))
		if n > maxQuery {
			return
		}
		q := make([]byte, n)
		if _, err := io.ReadFull(r, q); err != nil {
			return
		}
		reply := st.resolve(q, false)
		if reply == nil {
			return
		}
		out := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(reply)), uint16(len(reply)))
		if _, err := c.Write(append(out, reply...)); err != nil {
			return
		}
	}
}

// resolve answers one guest query: the engine decides the name first; a
// refused one is answered NXDOMAIN here and never sent upstream. nil means
// no answer at all (not a query).
func (st *Stack) resolve(query []byte, overUDP bool) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil || h.Response {
		return nil
	}
	if h.OpCode != 0 {
		// NOTIFY, UPDATE, IQUERY...: a guest has no business sending them
		// anywhere, and their other sections carry arbitrary records.
		return replyCode(h, nil, dnsmessage.RCodeNotImplemented)
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		return replyCode(h, qs, dnsmessage.RCodeFormatError)
	}
	q := qs[0]
	upstream, code := upstreamQuery(&p, h, q)
	if code != dnsmessage.RCodeSuccess {
		return replyCode(h, qs, code)
	}
	name := q.Name.String()
	if v := st.cfg.Engine.DecideQuery(name, uint16(q.Type)); !v.Allowed {
		return replyCode(h, qs, dnsmessage.RCodeNameError)
	}
	reply, err := st.exchange(upstream, h.ID)
	if err != nil {
		st.log.Debug("dns upstream failed", "name", name, "err", err)
		return replyCode(h, qs, dnsmessage.RCodeServerFailure)
	}
	addrs, ttl := answers(reply)
	if len(addrs) > 0 {
		st.cfg.Engine.Learn(name, addrs, ttl)
	}
	if overUDP && len(reply) > udpSize(query) {
		// Too big for the guest's UDP: tell it to retry over TCP.
		t := replyCode(h, qs, dnsmessage.RCodeSuccess)
		t[2] |= 0x02 // TC
		return t
	}
	return reply
}

// upstreamQuery is the only form of query that leaves the host: a standard
// QUERY for one question of class IN, with at most an EDNS OPT record,
// rebuilt from its parsed fields, so that nothing else the guest put in
// the message (answer, authority or additional records, EDNS options,
// spare header bits) reaches the upstream resolver. p is past the
// question section. A code other than success is the guest's answer
// instead (FORMERR for a malformed or stuffed query, NOTIMP for another
// class).
func upstreamQuery(p *dnsmessage.Parser, h dnsmessage.Header, q dnsmessage.Question) ([]byte, dnsmessage.RCode) {
	if q.Class != dnsmessage.ClassINET {
		return nil, dnsmessage.RCodeNotImplemented
	}
	if rs, err := p.AllAnswers(); err != nil || len(rs) > 0 {
		return nil, dnsmessage.RCodeFormatError
	}
	if rs, err := p.AllAuthorities(); err != nil || len(rs) > 0 {
		return nil, dnsmessage.RCodeFormatError
	}
	var opt *dnsmessage.ResourceHeader
	for {
		rh, err := p.AdditionalHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil || rh.Type != dnsmessage.TypeOPT || opt != nil || p.SkipAdditional() != nil {
			return nil, dnsmessage.RCodeFormatError
		}
		opt = &rh
	}
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), dnsmessage.Header{ID: h.ID,
		RecursionDesired: h.RecursionDesired, CheckingDisabled: h.CheckingDisabled})
	b.EnableCompression()
	if b.StartQuestions() != nil || b.Question(q) != nil {
		return nil, dnsmessage.RCodeFormatError
	}
	if opt != nil {
		var rh dnsmessage.ResourceHeader
		if rh.SetEDNS0(int(opt.Class), dnsmessage.RCodeSuccess, opt.DNSSECAllowed()) != nil ||
			b.StartAdditionals() != nil || b.OPTResource(rh, dnsmessage.OPTResource{}) != nil {
			return nil, dnsmessage.RCodeFormatError
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil, dnsmessage.RCodeFormatError
	}
	return out, dnsmessage.RCodeSuccess
}

// exchange sends a query to the upstream over UDP, then TCP when the UDP
// answer is truncated.
func (st *Stack) exchange(query []byte, id uint16) ([]byte, error) {
	c, err := st.cfg.Dialer(st.ctx, "udp", st.upstream)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(upstreamTimeout))
	if _, err := c.Write(query); err != nil {
		return nil, err
	}
	buf := make([]byte, 65535)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		reply := buf[:n]
		if n < 12 || binary.BigEndian.Uint16(reply) != id || reply[2]&0x80 == 0 {
			continue // not the answer to this query
		}
		if reply[2]&0x02 == 0 {
			return append([]byte(nil), reply...), nil
		}
		break
	}
	return st.exchangeTCP(query, id)
}

func (st *Stack) exchangeTCP(query []byte, id uint16) ([]byte, error) {
	c, err := st.cfg.Dialer(st.ctx, "tcp", st.upstream)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(upstreamTimeout))
	msg := binary.BigEndian.AppendUint16(nil, uint16(len(query)))
	if _, err := c.Write(append(msg, query...)); err != nil {
		return nil, err
	}
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return nil, err
	}
	reply := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(c, reply); err != nil {
		return nil, err
	}
	if len(reply) < 12 || binary.BigEndian.Uint16(reply) != id {
		return nil, errors.New("dns upstream answered another query")
	}
	return reply, nil
}

// answers returns the A and AAAA addresses of a reply's answer section and
// the smallest TTL among them.
func answers(reply []byte) ([]netip.Addr, time.Duration) {
	var p dnsmessage.Parser
	if _, err := p.Start(reply); err != nil {
		return nil, 0
	}
	if err := p.SkipAllQuestions(); err != nil {
		return nil, 0
	}
	var out []netip.Addr
	ttl := time.Duration(-1)
	for {
		h, err := p.AnswerHeader()
		if err != nil {
			break
		}
		var a netip.Addr
		switch h.Type {
		case dnsmessage.TypeA:
			r, err := p.AResource()
			if err != nil {
				return out, max(ttl, 0)
			}
			a = netip.AddrFrom4(r.A)
		case dnsmessage.TypeAAAA:
			r, err := p.AAAAResource()
			if err != nil {
				return out, max(ttl, 0)
			}
			a = netip.AddrFrom16(r.AAAA)
		default:
			if err := p.SkipAnswer(); err != nil {
				return out, max(ttl, 0)
			}
			continue
		}
		out = append(out, a)
		if t := time.Duration(h.TTL) * time.Second; ttl < 0 || t < ttl {
			ttl = t
		}
	}
	return out, max(ttl, 0)
}

// udpSize is how large a UDP answer the querier accepts (its EDNS size).
func udpSize(query []byte) int {
	var p dnsmessage.Parser
	if _, err := p.Start(query); err != nil {
		return plainUDPSize
	}
	if p.SkipAllQuestions() != nil || p.SkipAllAnswers() != nil || p.SkipAllAuthorities() != nil {
		return plainUDPSize
	}
	for {
		h, err := p.AdditionalHeader()
		if err != nil {
			return plainUDPSize
		}
		if h.Type == dnsmessage.TypeOPT {
			return max(plainUDPSize, int(h.Class))
		}
		if p.SkipAdditional() != nil {
			return plainUDPSize
		}
	}
}

// replyCode builds an answer with no records and the given code.
func replyCode(q dnsmessage.Header, qs []dnsmessage.Question, code dnsmessage.RCode) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: q.ID, Response: true, OpCode: q.OpCode,
		RecursionDesired: q.RecursionDesired, RecursionAvailable: true, RCode: code})
	b.EnableCompression()
	_ = b.StartQuestions()
	for _, x := range qs {
		_ = b.Question(x)
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

// systemResolver is the first nameserver of /etc/resolv.conf.
func systemResolver() (string, error) {
	b, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return "", fmt.Errorf("no dns upstream: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil {
				return netip.AddrPortFrom(a.WithZone(""), 53).String(), nil
			}
		}
	}
	return "", errors.New("no dns upstream: /etc/resolv.conf names no nameserver")
}
