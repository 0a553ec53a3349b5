package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/pyro-mcp/pyro/internal/unixsock"
)

// qmp is a minimal client of the QEMU machine protocol: one command at a
// time, events remembered for wantEvent. Every line QEMU sends is bounded
// (maxQMPLine) and every exchange ends with its ctx (bound).
type qmp struct {
	path   string
	conn   *net.UnixConn
	r      *bufio.Reader
	mu     sync.Mutex
	events []qmpEvent
	// broken says the connection is out of step: an exchange that failed
	// or was cut short may leave part of a reply unread, which the next
	// command would take for its own. The next exchange connects anew
	// (callers go on after a failure: a failed save still resumes its
	// guest).
	broken bool
}

type qmpEvent struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

type qmpReply struct {
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// maxQMPLine bounds one line from QEMU (replies here are small).
const maxQMPLine = 1 << 20

// dialQMP connects to the QMP socket at path and negotiates capabilities.
func dialQMP(ctx context.Context, path string) (*qmp, error) {
	q := &qmp{path: path}
	if err := q.connect(ctx); err != nil {
		return nil, err
	}
	return q, nil
}

// connect opens a connection to QEMU, reads its greeting and negotiates
// capabilities, replacing (and closing) the one q had.
func (q *qmp) connect(ctx context.Context) error {
	if q.conn != nil {
		q.conn.Close()
		q.conn = nil
	}
	c, err := unixsock.Dial(ctx, q.path)
	if err != nil {
		return fmt.Errorf("connect qmp: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return errors.New("qmp: not a unix connection")
	}
	q.conn, q.r, q.broken = uc, bufio.NewReaderSize(uc, 64<<10), false
	end := q.bound(ctx)
	if _, err := q.readLine(); err != nil {
		err = end(err)
		q.conn.Close()
		return fmt.Errorf("qmp greeting: %w", err)
	}
	_, err = q.exchange("qmp_capabilities", nil, nil)
	if err = end(err); err != nil {
		q.conn.Close()
		return err
	}
	return nil
}

func (q *qmp) Close() error {
	if q.conn == nil { // a reconnect failed
		return nil
	}
	return q.conn.Close()
}

// defaultQMPWait bounds an exchange whose ctx has no deadline.
const defaultQMPWait = 30 * time.Second

// bound makes one exchange end with ctx: its deadline (or defaultQMPWait)
// on every read and write, and its cancellation, which cuts a blocked
// read or write short (a deadline alone would let a cancelled caller wait
// until it passes). The returned end takes the exchange's error and gives
// the one to report: ctx's own when ctx ended; it marks the connection
// broken when the exchange failed or was cut short.
func (q *qmp) bound(ctx context.Context) (end func(error) error) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(defaultQMPWait)
	}
	_ = q.conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = q.conn.SetDeadline(time.Unix(1, 0)) })
	return func(err error) error {
		if !stop() && ctx.Err() != nil {
			// The cut may land after this exchange ended: whatever comes
			// next on this connection could see it.
			if err == nil {
				err = ctx.Err()
			} else if !errors.Is(err, ctx.Err()) {
				err = fmt.Errorf("%w (%v)", ctx.Err(), err)
			}
		}
		if err != nil {
			q.broken = true
		}
		return err
	}
}

func (q *qmp) readLine() (qmpReply, error) {
	var line []byte
	for {
		chunk, isPrefix, err := q.r.ReadLine()
		if err != nil {
			return qmpReply{}, err
		}
		line = append(line, chunk...)
		if len(line) > maxQMPLine {
			return qmpReply{}, errors.New("qmp line too long")
		}
		if !isPrefix {
			break
		}
	}
	var r qmpReply
	if err := json.Unmarshal(line, &r); err != nil {
		return qmpReply{}, fmt.Errorf("qmp: %w", err)
	}
	return r, nil
}

// call runs one command; file, when not nil, travels with it as
// SCM_RIGHTS (for getfd). Events read meanwhile are kept.
func (q *qmp) call(ctx context.Context, cmd string, args any, file *os.File) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.broken {
		if err := q.connect(ctx); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
	}
	end := q.bound(ctx)
	r, err := q.exchange(cmd, args, file)
	var refused *qmpRefused
	if errors.As(err, &refused) {
		// A whole reply was read: the connection is still in step.
		if cut := end(nil); cut != nil {
			return nil, cut
		}
		return nil, err
	}
	return r, end(err)
}

// qmpRefused is QEMU's error reply to a command.
type qmpRefused struct{ cmd, class, desc string }

func (e *qmpRefused) Error() string { return fmt.Sprintf("qmp %s: %s: %s", e.cmd, e.class, e.desc) }

func (q *qmp) exchange(cmd string, args any, file *os.File) (json.RawMessage, error) {
	msg := map[string]any{"execute": cmd}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	b = append(b, '\n')
	if file != nil {
		_, _, err = q.conn.WriteMsgUnix(b, syscall.UnixRights(int(file.Fd())), nil)
	} else {
		_, err = q.conn.Write(b)
	}
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		r, err := q.readLine()
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		if r.Event != "" {
			if len(q.events) < 256 {
				q.events = append(q.events, qmpEvent{Event: r.Event, Data: r.Data})
			}
			continue
		}
		if r.Error != nil {
			return nil, &qmpRefused{cmd: cmd, class: r.Error.Class, desc: r.Error.Desc}
		}
		return r.Return, nil
	}
}

// dropEvents forgets the events read so far: a later waitEvent sees only
// what QEMU sends from now on.
func (q *qmp) dropEvents() {
	q.mu.Lock()
	q.events = nil
	q.mu.Unlock()
}

// waitEvent waits until QEMU sends an event named name whose data match
// (match nil: any), also one already read during an earlier call.
func (q *qmp) waitEvent(ctx context.Context, name string, match func(json.RawMessage) bool) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, e := range q.events {
		if e.Event == name && (match == nil || match(e.Data)) {
			q.events = q.events[i+1:]
			return nil
		}
	}
	q.events = nil
	if q.broken {
		if err := q.connect(ctx); err != nil {
			return fmt.Errorf("wait for qmp event %s: %w", name, err)
		}
	}
	end := q.bound(ctx)
	for {
		r, err := q.readLine()
		if err != nil {
			return fmt.Errorf("wait for qmp event %s: %w", name, end(err))
		}
		if r.Event == name && (match == nil || match(r.Data)) {
			return end(nil)
		}
	}
}

// pollStatus runs query (query-migrate or query-status) every few
// milliseconds until done says it is finished, or ctx ends.
func (q *qmp) poll(ctx context.Context, query string, done func(json.RawMessage) (bool, error)) error {
	for {
		r, err := q.call(ctx, query, nil, nil)
		if err != nil {
			return err
		}
		ok, err := done(r)
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", query, ctx.Err())
		case <-time.After(3 * time.Millisecond):
		}
	}
}
