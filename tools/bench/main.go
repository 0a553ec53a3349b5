// Command bench measures pyro against its performance goals and prints, per
// suite, a small table of medians with each figure's ratio to its goal. A
// missed goal is marked MISSED; it never fails the run. Run it with
// `make bench`.
//
// Suites (-suite, default all):
//
//	boot       `pyro run ENV -- true` against a bare QEMU boot to power-off
//	vm         StatusVM, exec round trip (agent channel, and through the
//	           supervisor's proxy), supervisor RSS
//	workspace  workspace create (empty, seeded), CLI exec against a no-op CLI
//	           call, sync push and export throughput against host tar, reset
//	shell      shell echo latency, service start with and without a probe
//
// Every VM and workspace it creates is deleted on the way out, Ctrl-C
// included. At most two guests run at once.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/pyro-mcp/pyro"
)

type config struct {
	pyroBin string // absolute
	env     string // environment of the boot and vm suites
	wsEnv   string // environment of the workspace and shell suites
	bootN   int
	iters   int // iterations of the cheap round trips
	cliN    int // iterations of CLI calls
	client  *pyro.Client
}

func main() {
	var cfg config
	suite := flag.String("suite", "all", "boot|vm|workspace|shell|all (comma-separated list allowed)")
	flag.StringVar(&cfg.pyroBin, "pyro", "bin/pyro", "pyro binary")
	flag.StringVar(&cfg.env, "env", "debian:12-base", "environment of the boot and vm suites")
	flag.StringVar(&cfg.wsEnv, "ws-env", "debian:12", "environment of the workspace and shell suites")
	flag.IntVar(&cfg.bootN, "n", 10, "iterations of the boot comparison")
	flag.IntVar(&cfg.iters, "iters", 50, "iterations of in-guest round trips (exec, status, shell echo)")
	flag.IntVar(&cfg.cliN, "cli-n", 20, "iterations of CLI calls")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runSuites(ctx, &cfg, *suite); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}

var suites = []struct {
	name string
	run  func(context.Context, *config) ([]row, error)
}{
	{"boot", benchBoot},
	{"vm", benchVM},
	{"workspace", benchWorkspace},
	{"shell", benchShell},
}

func runSuites(ctx context.Context, cfg *config, which string) error {
	var err error
	if cfg.pyroBin, err = filepath.Abs(cfg.pyroBin); err != nil {
		return err
	}
	if cfg.client, err = pyro.New(pyro.Options{Binary: cfg.pyroBin}); err != nil {
		return err
	}
	want := map[string]bool{}
	for _, s := range strings.Split(which, ",") {
		want[strings.TrimSpace(s)] = true
	}
	known := false
	for _, s := range suites {
		if want[s.name] || want["all"] {
			known = true
		}
	}
	if !known {
		return fmt.Errorf("unknown suite %q (want boot, vm, workspace, shell or all)", which)
	}
	var failed []string
	total := time.Now()
	for _, s := range suites {
		if !want[s.name] && !want["all"] {
			continue
		}
		start := time.Now()
		rows, err := s.run(ctx, cfg)
		printTable(s.name, rows, time.Since(start))
		if err != nil {
			fmt.Printf("  suite %s stopped early: %v\n", s.name, err)
			failed = append(failed, s.name)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	fmt.Printf("\nall suites done in %.0f s\n", time.Since(total).Seconds())
	if len(failed) > 0 {
		return fmt.Errorf("suites that could not run to the end: %s", strings.Join(failed, ", "))
	}
	return nil
}

// row is one figure of a table; a row without a unit is a remark (name:
// note). A row with a goal prints its ratio value/goal and whether it met
// the goal.
type row struct {
	name  string
	value float64
	unit  string
	note  string // spread, sample count, ...
	// goal, when set, is the bound: value <= goal, or value >= goal when
	// higherBetter. The printed ratio is value/goal either way.
	goal         float64
	goalText     string
	higherBetter bool
}

func (r row) hasGoal() bool { return r.goalText != "" }

func (r row) met() bool {
	if r.higherBetter {
		return r.value >= r.goal
	}
	return r.value <= r.goal
}

func printTable(suite string, rows []row, took time.Duration) {
	fmt.Printf("\n== %s (%.0f s) ==\n", suite, took.Seconds())
	w := 10
	for _, r := range rows {
		w = max(w, len(r.name))
	}
	fmt.Printf("  %-*s  %14s  %-14s  %7s\n", w, "figure", "median", "goal", "vs goal")
	for _, r := range rows {
		if r.unit == "" { // a remark, not a figure
			fmt.Printf("  %s: %s\n", r.name, r.note)
			continue
		}
		val := fmt.Sprintf("%s %s", num(r.value), r.unit)
		goal, ratio, verdict := "-", "", ""
		if r.hasGoal() {
			goal = r.goalText
			ratio = fmt.Sprintf("%.2f", r.value/r.goal)
			verdict = "ok"
			if !r.met() {
				verdict = "MISSED"
			}
		}
		line := fmt.Sprintf("  %-*s  %14s  %-14s  %7s  %-6s", w, r.name, val, goal, ratio, verdict)
		if r.note != "" {
			line += "  " + r.note
		}
		fmt.Println(strings.TrimRight(line, " "))
	}
}

// num prints a figure with sensible precision.
func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// spread notes the sample count, min and max of d in ms.
func spread(d []time.Duration) string {
	if len(d) == 0 {
		return ""
	}
	return fmt.Sprintf("(n=%d, min %s, max %s ms)", len(d), num(ms(slices.Min(d))), num(ms(slices.Max(d))))
}

// msRow is a median-in-milliseconds row without a goal.
func msRow(name string, d []time.Duration) row {
	return row{name: name, value: ms(median(d)), unit: "ms", note: spread(d)}
}

// command is exec.CommandContext that interrupts (SIGINT) rather than
// kills on cancellation, so that a pyro CLI cleans up what it started.
func command(ctx context.Context, name string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, name, args...)
	c.Cancel = func() error { return c.Process.Signal(os.Interrupt) }
	c.WaitDelay = 60 * time.Second
	return c
}

// timeIt runs f n times and returns the durations; it stops at the first
// error.
func timeIt(n int, f func() error) ([]time.Duration, error) {
	var out []time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		if err := f(); err != nil {
			return out, err
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}
