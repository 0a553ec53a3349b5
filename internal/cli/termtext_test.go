package cli

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro"
)

// Errors quote the guest (console tails, names): human output must not
// carry its terminal escape sequences.
func TestPrintErrorStripsTerminalControls(t *testing.T) {
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb}
	a.printError(errors.New("boot failed: console tail:\n\x1b]0;owned\x07\x1b[2Jkernel panic"))
	if s := errb.String(); strings.ContainsAny(s, "\x1b\x07") || !strings.Contains(s, "console tail:\nkernel panic") {
		t.Errorf("stderr: %q", s)
	}
}

// A pool's last failure and a memory snapshot's problem quote the guest's
// console (a pooled guest that died, a snapshot build that failed): the
// pool and env listings show them as one clean line.
func TestListingsQuoteConsoleAsOneLine(t *testing.T) {
	evil := "VMM exited; console:\n\x1b]0;owned\x07\x1b[2Jkernel panic"
	var b bytes.Buffer
	printPools(&b, []pyro.PoolStatus{{Environment: "debian:12", Size: 1, Failures: 3, LastError: evil}})
	printSnapshots(&b, []pyro.GoldenSnapshot{{ID: "abc", Problem: evil}})
	if s := b.String(); strings.ContainsAny(s, "\x1b\x07") || strings.Count(s, "\n") != 3 {
		t.Errorf("listings: %q", s)
	}
}

func TestShortDigest(t *testing.T) {
	full := strings.Repeat("ab", 32)
	for in, want := range map[string]string{full: full[:12], "ab": "ab", "": "", "x\x1b[2J": "x"} {
		if got := shortDigest(in); got != want {
			t.Errorf("shortDigest(%q) = %q, want %q", in, got, want)
		}
	}
}

// A fork's inherited service names and shell ids are what the source's
// guest told (its identity frame): the fork's human output shows each as
// one clean item, never the guest's escape sequences.
func TestPrintForkQuotesGuestNamesAsText(t *testing.T) {
	evil := "web\x1b]0;owned\x07\x1b[2J\nfake line"
	var b bytes.Buffer
	printFork(&b, pyro.ForkResult{SourceWorkspaceID: "src", Forks: []pyro.ForkedWorkspace{{
		InheritedServices: []string{evil}, InheritedShells: []string{evil},
	}}})
	if s := b.String(); strings.ContainsAny(s, "\x1b\x07") || strings.Count(s, "\n") != 3 {
		t.Errorf("fork output: %q", s)
	}
}

// A service's state, a job's id and state, and the signal a shell signal's
// answer names are what the guest answered (a hostile agent chooses any
// string): every human printer of them shows one clean line each, never
// the guest's escape sequences.
func TestPrintersQuoteGuestStatesAsText(t *testing.T) {
	evil := "running\x1b]0;owned\x07\x1b[2J\nfake line"
	var b bytes.Buffer
	printServices(&b, []pyro.Service{{Name: "web", State: evil}})
	printService(&b, pyro.Service{Name: "web", State: evil})
	printJobs(&b, []pyro.WorkspaceJob{{JobID: evil, State: evil}})
	fmt.Fprintln(&b, jobStateText(evil, nil, 0, false))
	printSummary(&b, pyro.WorkspaceSummary{Services: []pyro.SummaryService{{Name: "web", State: evil}}})
	printShellSignal(&b, pyro.ShellSignal{Signal: evil})
	if s := b.String(); strings.ContainsAny(s, "\x1b\x07") || strings.Contains(s, "\nfake line") {
		t.Errorf("printed: %q", s)
	}
}
