// Package dnstest is a tiny authoritative DNS server on the host's loopback
// for tests: the network stack's upstream (PYRO_DNS_UPSTREAM in e2e tests).
// It answers A and TXT records from fixed tables and remembers every name
// it was asked, so a test can prove a refused name never reached it.
package dnstest

import (
	"net"
	"net/netip"
	"strings"
	"sync"

	"golang.org/x/net/dns/dnsmessage"
)

// Server answers on 127.0.0.1 UDP.
type Server struct {
	A   map[string]netip.Addr // name (no trailing dot) -> address
	TXT map[string]string

	pc   net.PacketConn
	mu   sync.Mutex
	seen []string
	raw  [][]byte
}

// Start listens on a free loopback port.
func Start(a map[string]netip.Addr, txt map[string]string) (*Server, error) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{A: a, TXT: txt, pc: pc}
	go s.serve()
	return s, nil
}

// Addr is "127.0.0.1:PORT".
func (s *Server) Addr() string { return s.pc.LocalAddr().String() }

// Close stops the server.
func (s *Server) Close() error { return s.pc.Close() }

// Seen returns the names asked so far (lower case, no trailing dot).
func (s *Server) Seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

// Raw returns every message received so far, as received.
func (s *Server) Raw() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.raw...)
}

func (s *Server) serve() {
	buf := make([]byte, 4096)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		s.mu.Lock()
		s.raw = append(s.raw, append([]byte(nil), buf[:n]...))
		s.mu.Unlock()
		if out := s.answer(buf[:n]); out != nil {
			_, _ = s.pc.WriteTo(out, from)
		}
	}
}

func (s *Server) answer(q []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		return nil
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		return nil
	}
	name := strings.TrimSuffix(strings.ToLower(qs[0].Name.String()), ".")
	s.mu.Lock()
	s.seen = append(s.seen, name)
	s.mu.Unlock()
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	a, hasA := s.A[name]
	txt, hasTXT := s.TXT[name]
	if !hasA && !hasTXT {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	_ = b.StartQuestions()
	_ = b.Question(qs[0])
	_ = b.StartAnswers()
	rr := dnsmessage.ResourceHeader{Name: qs[0].Name, Class: dnsmessage.ClassINET, TTL: 300}
	switch {
	case qs[0].Type == dnsmessage.TypeA && hasA && a.Is4():
		_ = b.AResource(rr, dnsmessage.AResource{A: a.As4()})
	case qs[0].Type == dnsmessage.TypeTXT && hasTXT:
		_ = b.TXTResource(rr, dnsmessage.TXTResource{TXT: []string{txt}})
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}
