package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

const mib = 1 << 20

// benchWorkspace times workspace create (empty and seeded), CLI exec next to
// a CLI call that does nothing, sync push and export of a 200 MiB tree next
// to host tar, and reset.
func benchWorkspace(ctx context.Context, cfg *config) (rows []row, err error) {
	tmp, err := os.MkdirTemp("", "pyro-bench-ws-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	seed := filepath.Join(tmp, "seed")
	seedBytes, seedFiles, err := makeTree(seed, seedSizes())
	if err != nil {
		return nil, err
	}
	big := filepath.Join(tmp, "big")
	bigBytes, bigFiles, err := makeTree(big, bigSizes())
	if err != nil {
		return nil, err
	}

	var ids []string
	defer func() {
		for _, id := range ids {
			if _, derr := cfg.client.DeleteWorkspace(context.Background(), id); derr != nil && err == nil {
				err = fmt.Errorf("delete workspace %s: %w", id, derr)
			}
		}
	}()
	create := func(args ...string) (string, time.Duration, error) {
		start := time.Now()
		out, err := pyroCLI(ctx, cfg, append([]string{"--json", "workspace", "create", cfg.wsEnv}, args...)...)
		took := time.Since(start)
		if err != nil {
			return "", took, err
		}
		var ws struct {
			ID string `json:"workspace_id"`
		}
		if err := json.Unmarshal(out, &ws); err != nil || ws.ID == "" {
			return "", took, fmt.Errorf("workspace create: no workspace_id in %q", out)
		}
		ids = append(ids, ws.ID)
		return ws.ID, took, nil
	}

	// Create, empty and seeded; reset of the seeded one (its baseline is the
	// seed); then it goes, so that at most two guests run at once.
	empty, tEmpty, err := create()
	if err != nil {
		return rows, err
	}
	rows = append(rows, row{name: "workspace create (empty)", value: ms(tEmpty), unit: "ms", note: "(n=1, CLI)"})
	seeded, tSeeded, err := create("--seed-path", seed)
	if err != nil {
		return rows, err
	}
	rows = append(rows, row{name: fmt.Sprintf("workspace create (seed %d MiB, %d files)", seedBytes/mib, seedFiles),
		value: ms(tSeeded), unit: "ms", note: "(n=1, CLI)"})
	tResetSeeded, err := timeIt(1, func() error { _, err := pyroCLI(ctx, cfg, "workspace", "reset", seeded); return err })
	if err != nil {
		return rows, err
	}
	if _, err := cfg.client.DeleteWorkspace(ctx, seeded); err != nil {
		return rows, err
	}
	ids = ids[:1]

	// CLI exec against a CLI call that does no work. `pyro --version` when
	// this build has it, else `pyro --help`.
	noop := []string{"--version"}
	noopName := "pyro --version"
	if _, err := pyroCLI(ctx, cfg, noop...); err != nil {
		noop, noopName = []string{"--help"}, "pyro --help (no --version)"
	}
	if _, err := pyroCLI(ctx, cfg, "workspace", "exec", empty, "--", "true"); err != nil { // warm-up
		return rows, err
	}
	var tExec, tNoop []time.Duration
	for i := 0; i < cfg.cliN; i++ {
		d, err := timeIt(1, func() error { _, err := pyroCLI(ctx, cfg, "workspace", "exec", empty, "--", "true"); return err })
		if err != nil {
			return rows, err
		}
		tExec = append(tExec, d...)
		if d, err = timeIt(1, func() error { _, err := pyroCLI(ctx, cfg, noop...); return err }); err != nil {
			return rows, err
		}
		tNoop = append(tNoop, d...)
	}
	rows = append(rows,
		msRow("pyro workspace exec ID -- true", tExec),
		msRow(noopName, tNoop),
		row{name: "ratio workspace exec / " + noop[0], value: float64(median(tExec)) / float64(median(tNoop)), unit: "x", goal: 1.3, goalText: "<= 1.30x"},
	)

	// Throughput: host tar, then push into the guest and export back.
	hostDst := filepath.Join(tmp, "host-copy")
	if err := os.Mkdir(hostDst, 0o755); err != nil {
		return rows, err
	}
	tHost, err := timeIt(1, func() error {
		c := exec.CommandContext(ctx, "sh", "-c", `tar -C "$1" -cf - . | tar -C "$2" -xf -`, "sh", big, hostDst)
		if out, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("host tar: %v: %s", err, out)
		}
		return nil
	})
	if err != nil {
		return rows, err
	}
	_ = os.RemoveAll(hostDst)
	tPush, err := timeIt(1, func() error {
		_, err := pyroCLI(ctx, cfg, "workspace", "sync", "push", empty, big, "--dest", "/workspace/big")
		return err
	})
	if err != nil {
		return rows, err
	}
	exported := filepath.Join(tmp, "exported")
	tExport, err := timeIt(1, func() error {
		_, err := pyroCLI(ctx, cfg, "workspace", "export", empty, "big", "--output", exported)
		return err
	})
	if err != nil {
		return rows, err
	}
	if n, err := treeBytes(exported); err != nil || n != bigBytes {
		return rows, fmt.Errorf("export of big: %d bytes, want %d (%v)", n, bigBytes, err)
	}
	_ = os.RemoveAll(exported)
	mbps := func(d []time.Duration) float64 { return float64(bigBytes) / 1e6 / median(d).Seconds() }
	host := mbps(tHost)
	label := fmt.Sprintf("%d MiB, %d files", bigBytes/mib, bigFiles)
	rows = append(rows,
		row{name: "host tar | tar (" + label + ")", value: host, unit: "MB/s", note: fmt.Sprintf("(n=1, %s ms)", num(ms(tHost[0])))},
		row{name: "workspace sync push", value: mbps(tPush), unit: "MB/s", note: fmt.Sprintf("(n=1, %s ms)", num(ms(tPush[0])))},
		row{name: "ratio sync push / host tar", value: mbps(tPush) / host, unit: "x", goal: 0.5, goalText: ">= 0.50x", higherBetter: true},
		row{name: "workspace export", value: mbps(tExport), unit: "MB/s", note: fmt.Sprintf("(n=1, %s ms)", num(ms(tExport[0])))},
		row{name: "ratio export / host tar", value: mbps(tExport) / host, unit: "x", goal: 0.5, goalText: ">= 0.50x", higherBetter: true},
	)

	// Reset of the empty one (its /workspace holds the 200 MiB tree now;
	// the baseline is empty).
	tResetEmpty, err := timeIt(1, func() error { _, err := pyroCLI(ctx, cfg, "workspace", "reset", empty); return err })
	if err != nil {
		return rows, err
	}
	rows = append(rows,
		row{name: "workspace reset (empty baseline)", value: ms(tResetEmpty[0]), unit: "ms", note: "(n=1, CLI)"},
		row{name: fmt.Sprintf("workspace reset (%d MiB baseline)", seedBytes/mib), value: ms(tResetSeeded[0]), unit: "ms", note: "(n=1, CLI)"},
	)
	return rows, nil
}

// pyroCLI runs the pyro binary and returns its stdout.
func pyroCLI(ctx context.Context, cfg *config, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	c := command(ctx, cfg.pyroBin, args...)
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("pyro %v: %v: %s%s", args, err, stderr.Bytes(), stdout.Bytes())
	}
	return stdout.Bytes(), nil
}

// seedSizes: 5,000 files, 50 MiB in all (sizes spread 0.5x to 1.5x of the
// mean, exact total).
func seedSizes() []int {
	const n, total = 5000, 50 * mib
	sizes := make([]int, n)
	r := rand.New(rand.NewPCG(1, 2))
	sum := 0
	for i := range sizes {
		sizes[i] = total/n/2 + r.IntN(total/n)
		sum += sizes[i]
	}
	sizes[n-1] += total - sum
	return sizes
}

// bigSizes: 200 MiB as one 64 MiB file, 8 of 8 MiB, 64 of 1 MiB and 2,048
// of 4 KiB.
func bigSizes() []int {
	var s []int
	add := func(n, size int) {
		for range n {
			s = append(s, size)
		}
	}
	add(1, 64*mib)
	add(8, 8*mib)
	add(64, mib)
	add(2048, 4<<10)
	return s
}

// makeTree writes files of the given sizes, 100 to a directory, with
// incompressible content.
func makeTree(root string, sizes []int) (total int64, files int, err error) {
	r := rand.NewChaCha8([32]byte{7})
	buf := make([]byte, 1<<20)
	for i, size := range sizes {
		dir := filepath.Join(root, fmt.Sprintf("d%03d", i/100))
		if i%100 == 0 {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return 0, 0, err
			}
		}
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%05d", i)))
		if err != nil {
			return 0, 0, err
		}
		for left := size; left > 0; {
			n := min(left, len(buf))
			_, _ = r.Read(buf[:n])
			if _, err := f.Write(buf[:n]); err != nil {
				f.Close()
				return 0, 0, err
			}
			left -= n
		}
		if err := f.Close(); err != nil {
			return 0, 0, err
		}
		total += int64(size)
	}
	return total, len(sizes), nil
}

// treeBytes sums the sizes of the regular files under root.
func treeBytes(root string) (int64, error) {
	var n int64
	err := filepath.WalkDir(root, func(_ string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err == nil {
			n += info.Size()
		}
		return err
	})
	return n, err
}
