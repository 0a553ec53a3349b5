package netstack

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"time"
)

// A flow that must name its server is read for at most peekLimit bytes and
// peekTimeout before it is decided: enough for a TLS ClientHello (one
// record of up to 16 KiB) or an HTTP request head.
const (
	peekLimit   = 20 << 10
	peekTimeout = 10 * time.Second
)

var errPeeked = errors.New("server name read")

// peekServerName reads the start of a guest's TCP stream and returns the
// server name it carries (TLS SNI, else the HTTP Host header, else "") and
// every byte it read, which the caller forwards first. The TLS ClientHello
// is parsed by crypto/tls itself (a server that stops once it has seen the
// hello), not by a parser of our own.
func peekServerName(c net.Conn, limit int, timeout time.Duration) (string, []byte) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	r := &replay{Conn: c, limit: limit}
	var first [1]byte
	if _, err := io.ReadFull(r, first[:]); err != nil {
		return "", r.buf
	}
	r.pos = 0
	if first[0] == 0x16 { // a TLS handshake record
		var name string
		srv := tls.Server(r, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			name = h.ServerName
			return nil, errPeeked
		}})
		_ = srv.Handshake()
		return name, r.buf
	}
	req, err := http.ReadRequest(bufio.NewReaderSize(r, 4096))
	if err != nil {
		return "", r.buf
	}
	return req.Host, r.buf
}

// replay is a net.Conn that reads back what it already read from Conn
// (from pos), then reads on, keeping everything, up to limit bytes in all.
// Writes (a TLS alert) are dropped: the guest must not see our parser.
type replay struct {
	net.Conn
	buf   []byte
	pos   int
	limit int
}

func (r *replay) Read(p []byte) (int, error) {
	if r.pos < len(r.buf) {
		n := copy(p, r.buf[r.pos:])
		r.pos += n
		return n, nil
	}
	room := r.limit - len(r.buf)
	if room <= 0 {
		return 0, io.EOF
	}
	if len(p) > room {
		p = p[:room]
	}
	n, err := r.Conn.Read(p)
	r.buf = append(r.buf, p[:n]...)
	r.pos = len(r.buf)
	return n, err
}

func (r *replay) Write(p []byte) (int, error) { return len(p), nil }
func (r *replay) Close() error                { return nil }
