package mcpserver

import (
	"fmt"
	"strings"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// Text renderings of the tools' results (the structured result carries
// the same data as JSON).

// command maps the tools' shell-string command onto the SDK's argv.
func command(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, `pass a shell command string, e.g. "uname -a"`, "command is empty")
	}
	return []string{s}, nil
}

// renderExec is the text rendering of a command's result.
func renderExec(exitCode int, timedOut bool, signal string, durationMS int64, stdout, stderr string, stdoutTrunc, stderrTrunc bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "exit_code: %d (%d ms)", exitCode, durationMS)
	if timedOut {
		b.WriteString(", timed out and killed")
	}
	if signal != "" {
		fmt.Fprintf(&b, ", signal %s", signal)
	}
	b.WriteString("\n")
	section := func(name, s string, trunc bool) {
		if s == "" {
			fmt.Fprintf(&b, "%s: (empty)\n", name)
			return
		}
		fmt.Fprintf(&b, "%s:\n%s", name, s)
		if !strings.HasSuffix(s, "\n") {
			b.WriteString("\n")
		}
		if trunc {
			fmt.Fprintf(&b, "(%s truncated)\n", name)
		}
	}
	section("stdout", stdout, stdoutTrunc)
	section("stderr", stderr, stderrTrunc)
	return strings.TrimRight(b.String(), "\n")
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func renderVM(v pyro.VM) string {
	s := fmt.Sprintf("vm %s: %s (%s, %d vCPU, %d MiB", v.VMID, v.State, v.Environment, v.VCPUCount, v.MemMiB)
	if v.Network {
		s += ", network " + renderPolicy(v.NetworkPolicy, v.AllowHosts)
	}
	s += ")"
	if v.Reason != "" {
		s += ": " + v.Reason
	}
	return s
}

func renderWorkspace(ws pyro.Workspace) string {
	s := fmt.Sprintf("workspace %s: %s (%s, %d vCPU, %d MiB", ws.WorkspaceID, ws.State, ws.Environment, ws.VCPUCount, ws.MemMiB)
	if ws.Name != "" {
		s = fmt.Sprintf("workspace %s (%q): %s (%s, %d vCPU, %d MiB", ws.WorkspaceID, ws.Name, ws.State, ws.Environment, ws.VCPUCount, ws.MemMiB)
	}
	if ws.Network {
		s += ", network " + renderPolicy(ws.NetworkPolicy, ws.AllowHosts)
	}
	s += fmt.Sprintf("), seed %s (%d files), resets %d, commands %d, services %d running of %d",
		ws.WorkspaceSeed.Mode, ws.WorkspaceSeed.FileCount, ws.ResetCount, ws.CommandCount, ws.RunningServiceCount, ws.ServiceCount)
	if len(ws.Secrets) > 0 {
		var names []string
		for _, sc := range ws.Secrets {
			names = append(names, sc.Name)
		}
		s += ", secrets " + strings.Join(names, ", ")
	}
	s += renderJobs(ws.Jobs)
	return withDenials(s, ws.NetworkDenials)
}

func renderDiff(d pyro.WorkspaceDiff) string {
	if len(d.Changes) == 0 {
		return "no changes since baseline"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d added, %d modified, %d deleted\n", len(d.Added), len(d.Modified), len(d.Deleted))
	for _, ch := range d.Changes {
		fmt.Fprintf(&b, "%s %s (%s)\n", ch.Status, ch.Path, ch.Kind)
		if ch.Diff != "" {
			b.WriteString(ch.Diff)
			if !strings.HasSuffix(ch.Diff, "\n") {
				b.WriteString("\n")
			}
		} else if ch.Note != "" {
			b.WriteString("  " + ch.Note + "\n")
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

func renderService(sv pyro.Service) string {
	s := fmt.Sprintf("service %s: %s", sv.Name, sv.State)
	if sv.PID != 0 {
		s += fmt.Sprintf(" (pid %d)", sv.PID)
	}
	if sv.ExitCode != nil {
		s += fmt.Sprintf(", exit_code %d", *sv.ExitCode)
	}
	for _, p := range sv.PublishedPorts {
		s += fmt.Sprintf(", published %s:%d -> %d", p.HostAddress, p.HostPort, p.GuestPort)
	}
	return s
}
