package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/statedir"
	"github.com/pyro-mcp/pyro/internal/supervisor"
	"github.com/pyro-mcp/pyro/internal/vmdir"
)

const serviceN = 5

// benchShell measures the latency of a shell echo (write to first read that
// holds the output) and the wall time of StartService with and without a
// readiness probe.
func benchShell(ctx context.Context, cfg *config) (rows []row, err error) {
	c := cfg.client
	ws, err := c.CreateWorkspace(ctx, pyro.CreateWorkspaceOptions{Environment: cfg.wsEnv})
	if err != nil {
		return nil, err
	}
	defer func() {
		if _, derr := c.DeleteWorkspace(context.Background(), ws.WorkspaceID); derr != nil && err == nil {
			err = fmt.Errorf("delete workspace %s: %w", ws.WorkspaceID, derr)
		}
	}()
	id := ws.WorkspaceID
	sh, err := c.OpenShell(ctx, id, nil)
	if err != nil {
		return nil, err
	}
	defer c.CloseShell(context.Background(), id, sh.ShellID)

	// The agent client through the supervisor's proxy, for long-poll reads.
	dirs := statedir.Dirs{Root: c.StateDir()}
	agent := supervisor.NewClient(vmdir.Dir(dirs.Workspaces() + "/" + id)).Agent()
	defer agent.Close()

	// Let the shell print its prompt, and start after it.
	var cursor int64
	for {
		r, err := agent.ReadShell(ctx, sh.ShellID, agentapi.ShellReadRequest{Cursor: cursor, WaitMS: 300})
		if err != nil {
			return nil, err
		}
		if r.NextCursor == cursor {
			break
		}
		cursor = r.NextCursor
	}

	// echoes types `echo "x"N` (its echo on the PTY does not hold xN, the
	// output does) and reads until the output holds xN.
	marker := 0
	echoes := func(write func(string) error, read func(int64) (string, int64, error)) ([]time.Duration, error) {
		return timeIt(cfg.iters, func() error {
			marker++
			want := fmt.Sprintf("x%d\r", marker)
			if err := write(fmt.Sprintf(`echo "x"%d`, marker)); err != nil {
				return err
			}
			var seen strings.Builder
			deadline := time.Now().Add(30 * time.Second)
			for !strings.Contains(seen.String(), want) {
				if time.Now().After(deadline) {
					return fmt.Errorf("no %q from the shell in 30 s; got %q", want, seen.String())
				}
				out, next, err := read(cursor)
				if err != nil {
					return err
				}
				seen.WriteString(out)
				cursor = next
			}
			return nil
		})
	}
	sdk, err := echoes(
		func(s string) error { _, err := c.WriteShell(ctx, id, sh.ShellID, s, nil); return err },
		func(cur int64) (string, int64, error) {
			r, err := c.ReadShell(ctx, id, sh.ShellID, &pyro.ReadShellOptions{Cursor: cur})
			return r.Output, r.NextCursor, err
		})
	if err != nil {
		return nil, fmt.Errorf("shell echo via SDK: %w", err)
	}
	longPoll, err := echoes(
		func(s string) error { _, err := agent.WriteShell(ctx, sh.ShellID, s, true); return err },
		func(cur int64) (string, int64, error) {
			r, err := agent.ReadShell(ctx, sh.ShellID, agentapi.ShellReadRequest{Cursor: cur, WaitMS: 5000})
			return r.Output, r.NextCursor, err
		})
	if err != nil {
		return nil, fmt.Errorf("shell echo via long-poll: %w", err)
	}
	rows = append(rows,
		goalMS("shell echo, SDK write + busy ReadShell", sdk, 20),
		goalMS("shell echo, proxied agent, wait_ms read", longPoll, 20),
	)

	// Services: no probe, and a file probe that passes as soon as the
	// command has run its first line.
	var plain, probed []time.Duration
	for i := range serviceN {
		start := func(name string, o pyro.StartServiceOptions) error {
			t := time.Now()
			st, err := c.StartService(ctx, id, name, o)
			if err != nil {
				return err
			}
			d := time.Since(t)
			if o.Readiness == nil {
				plain = append(plain, d)
			} else {
				if st.State != agentapi.ServiceRunning {
					return fmt.Errorf("service %s is %s, not ready", name, st.State)
				}
				probed = append(probed, d)
			}
			_, err = c.StopService(ctx, id, name)
			return err
		}
		if err := start(fmt.Sprintf("plain%d", i), pyro.StartServiceOptions{Command: []string{"sleep 1000"}}); err != nil {
			return rows, err
		}
		ready := fmt.Sprintf("/tmp/ready%d", i)
		if err := start(fmt.Sprintf("probed%d", i), pyro.StartServiceOptions{
			Command:         []string{"touch " + ready + "; exec sleep 1000"},
			Readiness:       &pyro.Readiness{Type: agentapi.ProbeFile, Path: ready},
			ReadyIntervalMS: 50,
		}); err != nil {
			return rows, err
		}
	}
	mp, mr := median(plain), median(probed)
	rows = append(rows,
		msRow("StartService, no readiness probe", plain),
		msRow("StartService, file probe (interval 50 ms)", probed),
		row{name: "probe overhead (difference of medians)", value: ms(mr - mp), unit: "ms"},
	)
	return rows, nil
}
