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
// (maxQMPLine) and every call ends with ctx.
type qmp struct {
	conn   *net.UnixConn
	r      *bufio.Reader
	mu     sync.Mutex
	events []qmpEvent
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
	c, err := unixsock.Dial(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("connect qmp: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("qmp: not a unix connection")
	}
	q := &qmp{conn: uc, r: bufio.NewReaderSize(uc, 64<<10)}
	if _, err := q.readLine(ctx); err != nil { // the greeting
		q.Close()
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	if _, err := q.call(ctx, "qmp_capabilities", nil, nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmp) Close() error { return q.conn.Close() }

func (q *qmp) readLine(ctx context.Context) (qmpReply, error) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(30 * time.Second)
	}
	_ = q.conn.SetReadDeadline(dl)
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
	msg := map[string]any{"execute": cmd}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	b = append(b, '\n')
	if dl, ok := ctx.Deadline(); ok {
		_ = q.conn.SetWriteDeadline(dl)
	}
	if file != nil {
		_, _, err = q.conn.WriteMsgUnix(b, syscall.UnixRights(int(file.Fd())), nil)
	} else {
		_, err = q.conn.Write(b)
	}
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		r, err := q.readLine(ctx)
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
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, r.Error.Class, r.Error.Desc)
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
	for {
		r, err := q.readLine(ctx)
		if err != nil {
			return fmt.Errorf("wait for qmp event %s: %w", name, err)
		}
		if r.Event == name && (match == nil || match(r.Data)) {
			return nil
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
