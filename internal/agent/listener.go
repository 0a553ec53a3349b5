package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Listener yields host connections, one after the other: virtio-serial
// (one port, reopened per host connection), a unix socket (host-compat),
// and later vsock are each one Listener, so the agent loop is written once.
type Listener interface {
	// Accept waits for the next host connection.
	Accept() (io.ReadWriteCloser, error)
	Close() error
}

// ServeListener serves host connections from ln one at a time until ctx
// ends or ln fails; it closes ln when it returns.
func (s *Agent) ServeListener(ctx context.Context, ln Listener) error {
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	defer ln.Close()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if err := s.Serve(ctx, conn); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			s.log.Debug("agent session ended", "err", err)
		}
	}
}

// NetListener adapts a net.Listener (unix socket, vsock) to Listener. A
// temporary accept error is retried after a short pause.
func NetListener(ln net.Listener) Listener { return netListener{ln} }

type netListener struct{ ln net.Listener }

func (l netListener) Accept() (io.ReadWriteCloser, error) {
	for {
		c, err := l.ln.Accept()
		if err == nil {
			return c, nil
		}
		if errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			// EMFILE and the like: wait rather than spin.
			time.Sleep(10 * time.Millisecond)
			continue
		}
	}
}

func (l netListener) Close() error { return l.ln.Close() }

// SerialListener is the virtio-serial port named name: each Accept opens
// the port (O_RDWR, once per host connection: a second open is EBUSY) and
// returns it once a host is connected (waitHost). Reads return EOF when
// the host goes away; the next Accept reopens. A session that ended at
// once makes the next Accept wait a little longer, up to 200 ms; one that
// carried traffic resets the wait. With fast, the wait is always 1 ms: a
// guest that may be saved as a memory snapshot (pyro.snapshot=1) is saved
// while no host is connected, and each guest restored from it must answer
// its new host at once.
func SerialListener(name string, wait time.Duration, fast bool) (Listener, error) {
	dev, err := findPort(name, wait)
	if err != nil {
		return nil, err
	}
	return &serialListener{dev: dev, done: make(chan struct{}), fast: fast}, nil
}

type serialListener struct {
	dev     string
	done    chan struct{}
	opened  time.Time
	backoff time.Duration
	fast    bool
}

func (l *serialListener) Accept() (io.ReadWriteCloser, error) {
	if !l.opened.IsZero() {
		// The previous session ended.
		if time.Since(l.opened) > time.Second {
			l.backoff = 10 * time.Millisecond
		} else if l.backoff < 200*time.Millisecond {
			l.backoff = max(2*l.backoff, 10*time.Millisecond)
		}
		if l.fast {
			l.backoff = time.Millisecond
		}
		select {
		case <-time.After(l.backoff):
		case <-l.done:
			return nil, net.ErrClosed
		}
	}
	select {
	case <-l.done:
		return nil, net.ErrClosed
	default:
	}
	f, err := os.OpenFile(l.dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open agent port %s: %w", l.dev, err)
	}
	if err := l.waitHost(f); err != nil {
		_ = f.Close()
		return nil, err
	}
	l.opened = time.Now()
	return f, nil
}

// waitHost keeps the freshly opened port f open until a host is connected
// (the port no longer reports POLLHUP). Reading it before would return EOF
// at once, and the close that follows would discard whatever a host that
// connected in between already sent; closing and reopening in a loop
// would also flood QEMU with port events, of which it passes on only one
// a second (a fork's restore waits for one, internal/vmm/qemu/fork.go).
// Nothing blocks on a host connecting without sending, so the port is
// polled: every millisecond at first, then less often, up to every 50 ms.
// A guest that may be saved (fast) polls every 2 ms at most: it is saved
// inside this loop, so every guest restored from it waits here for its
// new host, and half the interval is added to every warm start (~25 ms at
// 50 ms). The wait lasts only until that host connects, which a restore
// does at once, so the shorter interval costs an idle guest nothing.
func (l *serialListener) waitHost(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	longest := 50 * time.Millisecond
	if l.fast {
		longest = 2 * time.Millisecond
	}
	for wait := time.Millisecond; ; wait = min(2*wait, longest) {
		hup := false
		var perr error
		if err := rc.Control(func(fd uintptr) {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, perr = unix.Poll(pfd, 0); perr == nil {
				hup = pfd[0].Revents&unix.POLLHUP != 0
			}
		}); err != nil {
			return err
		}
		if perr != nil && !errors.Is(perr, unix.EINTR) {
			return fmt.Errorf("poll agent port %s: %w", l.dev, perr)
		}
		if perr == nil && !hup {
			return nil
		}
		select {
		case <-time.After(wait):
		case <-l.done:
			return net.ErrClosed
		}
	}
}

func (l *serialListener) Close() error {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	return nil
}

// findPort returns /dev/<vportXpY> for the virtio-serial port with the given
// name, waiting up to wait for it to appear.
func findPort(name string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		matches, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, m := range matches {
			b, err := os.ReadFile(m)
			if err != nil || strings.TrimSpace(string(b)) != name {
				continue
			}
			dev := "/dev/" + filepath.Base(filepath.Dir(m))
			if _, err := os.Stat(dev); err == nil {
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no virtio-serial port named %q after %s", name, wait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
