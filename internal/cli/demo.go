package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pyro-mcp/pyro"
	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// demoStep is one step of `pyro demo` and its outcome.
type demoStep struct {
	Step       string `json:"step"`
	OK         bool   `json:"ok"`
	DurationMS int64  `json:"duration_ms"`
	Detail     string `json:"detail"`
}

// demoSummary is `pyro demo --json`'s output.
type demoSummary struct {
	Environment string     `json:"environment"`
	Pulled      bool       `json:"pulled"`
	OK          bool       `json:"ok"`
	Steps       []demoStep `json:"steps"`
	TotalMS     int64      `json:"total_ms"`
}

func (a *app) demoCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "A short guided tour: a one-shot run, then a workspace session",
		Long: `Shows what pyro does on this host, printing each step and its result:
a one-shot command in a fresh VM (pyro run), then a workspace: create it
seeded from a temporary directory, exec, diff against the baseline, snapshot,
reset to the baseline and delete it. It uses debian:12 when installed, else
debian:12-base, pulling debian:12-base first when neither is. Exits 0 when
every step worked; --json prints one summary object.

` + "`pyro demo ollama`" + ` lets a local model drive vm_run through Ollama.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := a.sdk
			return a.runDemo(cmd.Context(), c)
		},
	}
	cmd.AddCommand(a.demoOllamaCommand())
	return cmd
}

// logf prints a progress line: on stdout in human mode, on stderr with --json.
func (a *app) logf(format string, args ...any) {
	w := a.stdout
	if a.json {
		w = a.stderr
	}
	fmt.Fprintf(w, format+"\n", args...)
}

// demoEnvironment picks debian:12 when installed, else debian:12-base,
// pulling the latter when neither is installed.
func (a *app) demoEnvironment(ctx context.Context, c *pyro.Client) (string, bool, error) {
	for _, name := range []string{pyro.DefaultEnvironment, "debian:12-base"} {
		if e, err := c.InspectEnvironment(ctx, name); err == nil && e.Installed && e.Damaged == "" {
			return name, false, nil
		}
	}
	name := "debian:12-base"
	a.logf("environment %s is not installed: pulling it first (a local build can take a few minutes)", name)
	if _, err := c.PullEnvironment(ctx, name, pyro.PullOptions{}); err != nil {
		return "", false, err
	}
	return name, true, nil
}

func (a *app) runDemo(ctx context.Context, c *pyro.Client) error {
	start := time.Now()
	env, pulled, err := a.demoEnvironment(ctx, c)
	if err != nil {
		return err
	}
	sum := demoSummary{Environment: env, Pulled: pulled, Steps: []demoStep{}}
	const total = 7
	a.logf("pyro demo: a one-shot run, then a workspace session, in %s", env)

	// step runs f as step n and records its outcome; a failed step ends the demo.
	n := 0
	step := func(name string, f func() (string, error)) error {
		n++
		a.logf("\n[%d/%d] %s", n, total, name)
		t0 := time.Now()
		detail, err := f()
		s := demoStep{Step: name, OK: err == nil, DurationMS: time.Since(t0).Milliseconds(), Detail: detail}
		if err != nil {
			s.Detail = err.Error()
		}
		sum.Steps = append(sum.Steps, s)
		for _, line := range strings.Split(strings.TrimRight(s.Detail, "\n"), "\n") {
			a.logf("      %s", line)
		}
		if err != nil {
			a.logf("      FAILED after %.1f s", float64(s.DurationMS)/1000)
			return err
		}
		a.logf("      ok (%.1f s)", float64(s.DurationMS)/1000)
		return nil
	}
	finish := func(err error) error {
		sum.OK = err == nil
		sum.TotalMS = time.Since(start).Milliseconds()
		if a.json {
			_ = a.emit(sum, nil)
		} else if err == nil {
			a.logf("\ndemo finished in %.1f s: every step worked", float64(sum.TotalMS)/1000)
		}
		return err
	}

	oneShot := "uname -a"
	if env == pyro.DefaultEnvironment {
		oneShot = `uname -a && python3 -c 'import platform; print("python", platform.python_version())'`
	}
	err = step("run: "+oneShot+" in a fresh VM (deleted afterwards)", func() (string, error) {
		r, err := c.RunInVM(ctx, pyro.RunOptions{Environment: env, ExecOptions: pyro.ExecOptions{Command: []string{oneShot}}})
		if err != nil {
			return "", err
		}
		if r.ExitCode != 0 {
			return "", fmt.Errorf("exit code %d: %s", r.ExitCode, r.Stderr)
		}
		return fmt.Sprintf("%s(exit %d, boot %d ms, %s)", r.Stdout, r.ExitCode, r.BootMS, r.Acceleration), nil
	})
	if err != nil {
		return finish(err)
	}

	seed, err := os.MkdirTemp("", "pyro-demo-seed-")
	if err != nil {
		return finish(err)
	}
	defer os.RemoveAll(seed)
	if err := os.WriteFile(filepath.Join(seed, "hello.txt"), []byte("hello from the host\n"), 0o644); err != nil {
		return finish(err)
	}

	var ws pyro.Workspace
	err = step("workspace create, seeded from "+seed, func() (string, error) {
		var err error
		ws, err = c.CreateWorkspace(ctx, pyro.CreateWorkspaceOptions{Environment: env, SeedPath: seed})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("workspace %s is %s, /workspace seeded with %d file(s)", ws.WorkspaceID, ws.State, ws.WorkspaceSeed.FileCount), nil
	})
	if err != nil {
		return finish(err)
	}
	// The workspace goes away on every path out of the demo.
	deleted := false
	defer func() {
		if !deleted {
			_, _ = c.DeleteWorkspace(context.WithoutCancel(ctx), ws.WorkspaceID)
		}
	}()

	exec := func(cmdline string) (string, error) {
		r, err := c.ExecWorkspace(ctx, ws.WorkspaceID, pyro.ExecOptions{Command: []string{cmdline}})
		if err != nil {
			return "", err
		}
		if r.ExitCode != 0 {
			return "", fmt.Errorf("exit code %d: %s", r.ExitCode, r.Stderr)
		}
		return fmt.Sprintf("$ %s\n%s(exit %d)", cmdline, r.Stdout, r.ExitCode), nil
	}
	steps := []struct {
		name string
		f    func() (string, error)
	}{
		{"workspace exec: edit a file, add another", func() (string, error) {
			return exec("cat hello.txt && echo 'edited in the guest' >> hello.txt && echo 'new file' > notes.txt && ls")
		}},
		{"workspace diff against the create-time baseline", func() (string, error) {
			d, err := c.DiffWorkspace(ctx, ws.WorkspaceID)
			if err != nil {
				return "", err
			}
			var b strings.Builder
			for _, ch := range d.Changes {
				fmt.Fprintf(&b, "%s %s\n", ch.Status, ch.Path)
			}
			if len(d.Changes) == 0 {
				return "", errors.New("diff shows no change after an edit")
			}
			return strings.TrimRight(b.String(), "\n"), nil
		}},
		{"snapshot create demo-edit", func() (string, error) {
			s, err := c.CreateSnapshot(ctx, ws.WorkspaceID, "demo-edit")
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("snapshot %s (%d bytes)", s.Name, s.Bytes), nil
		}},
		{"workspace reset to the baseline (fresh VM, /workspace restored)", func() (string, error) {
			w, err := c.ResetWorkspace(ctx, ws.WorkspaceID, "")
			if err != nil {
				return "", err
			}
			out, err := exec("cat hello.txt && ls")
			if err != nil {
				return "", err
			}
			if strings.Contains(out, "edited in the guest") || strings.Contains(out, "notes.txt") {
				return "", fmt.Errorf("reset did not restore the baseline:\n%s", out)
			}
			return fmt.Sprintf("reset_count %d\n%s", w.ResetCount, out), nil
		}},
		{"workspace delete", func() (string, error) {
			d, err := c.DeleteWorkspace(ctx, ws.WorkspaceID)
			if err != nil {
				return "", err
			}
			deleted = true
			return fmt.Sprintf("workspace %s deleted (was %s)", d.WorkspaceID, d.PriorState), nil
		}},
	}
	for _, s := range steps {
		if err := step(s.name, s.f); err != nil {
			return finish(err)
		}
	}
	return finish(nil)
}

// The Ollama demo: a minimal agent loop against an OpenAI-compatible chat
// completions API (Ollama serves one at /v1/chat/completions) whose only
// tool is vm_run, executed in a real guest through the SDK.

type chatMessage struct {
	Role       string         `json:"role"`
	Content    string         `json:"content"`
	ToolCalls  []chatToolCall `json:"tool_calls,omitempty"`
	ToolCallID string         `json:"tool_call_id,omitempty"`
}

type chatToolCall struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name string `json:"name"`
		// Arguments is a JSON string in the OpenAI API; some servers send
		// the object itself.
		Arguments json.RawMessage `json:"arguments"`
	} `json:"function"`
}

type chatResponse struct {
	Choices []struct {
		Message      chatMessage `json:"message"`
		FinishReason string      `json:"finish_reason"`
	} `json:"choices"`
	Error *struct {
		Message string `json:"message"`
	} `json:"error"`
}

// vmRunFunction is the tool the model gets: the MCP vm_run tool, reduced
// to what a small model handles well.
var vmRunFunction = map[string]any{
	"type": "function",
	"function": map[string]any{
		"name":        "vm_run",
		"description": "Run one shell command (with /bin/sh -c) in a fresh, isolated Linux microVM (Debian 12) and return its exit_code, stdout and stderr. The VM is deleted afterwards.",
		"parameters": map[string]any{
			"type": "object",
			"properties": map[string]any{
				"command":         map[string]any{"type": "string", "description": "Shell command to run, e.g. \"uname -a\"."},
				"timeout_seconds": map[string]any{"type": "integer", "description": fmt.Sprintf("Kill the command after this many seconds. Default %d.", pyro.DefaultTimeoutSeconds)},
			},
			"required": []string{"command"},
		},
	},
}

// ollamaSummary is `pyro demo ollama --json`'s output.
type ollamaSummary struct {
	Model       string `json:"model"`
	BaseURL     string `json:"base_url"`
	Environment string `json:"environment"`
	Turns       int    `json:"turns"`
	ToolCalls   int    `json:"tool_calls"`
	ExitCodes   []int  `json:"exit_codes"`
	ElapsedMS   int64  `json:"elapsed_ms"`
	FinalAnswer string `json:"final_answer"`
	Error       string `json:"error,omitempty"`
}

func (a *app) demoOllamaCommand() *cobra.Command {
	var model, baseURL, prompt string
	var maxTurns int
	cmd := &cobra.Command{
		Use:   "ollama [--model M] [--base-url URL]",
		Short: "Let a local Ollama model run commands in microVMs through vm_run",
		Long: `A minimal agent loop: asks a model served by Ollama (its OpenAI-compatible
chat API, POST BASE_URL/v1/chat/completions) to solve a small task with one
tool, vm_run, runs every vm_run call it makes in a real guest, feeds the
result back, and stops at the model's final answer or after --max-turns.
Prints "[model]", "[tool]" and "[result]" log lines and one summary line.

Needs a running Ollama with a tool-calling model:
  ollama serve & ollama pull llama3.2:3b`,
		Example: `  pyro demo ollama
  pyro demo ollama --model qwen2.5:7b --base-url http://127.0.0.1:11434`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := a.sdk
			return a.runOllamaDemo(cmd.Context(), c, model, strings.TrimRight(baseURL, "/"), prompt, maxTurns)
		},
	}
	f := cmd.Flags()
	f.StringVar(&model, "model", "llama3.2:3b", "Ollama model (it must support tool calling)")
	f.StringVar(&baseURL, "base-url", "http://127.0.0.1:11434", "Ollama server URL")
	f.StringVar(&prompt, "prompt", "Use the vm_run tool to find out which Linux kernel version and which Debian release the sandbox runs, then answer in one short sentence.", "task given to the model")
	f.IntVar(&maxTurns, "max-turns", 6, "maximum chat requests before giving up")
	return cmd
}

func (a *app) runOllamaDemo(ctx context.Context, c *pyro.Client, model, baseURL, prompt string, maxTurns int) (err error) {
	start := time.Now()
	sum := ollamaSummary{Model: model, BaseURL: baseURL, ExitCodes: []int{}}
	defer func() {
		sum.ElapsedMS = time.Since(start).Milliseconds()
		if err != nil {
			sum.Error = err.Error()
		}
		if a.json {
			_ = a.emit(sum, nil)
			return
		}
		fmt.Fprintf(a.stdout, "summary: model=%s turns=%d tool_calls=%d exit_codes=%v elapsed=%.1fs final_answer=%q\n",
			sum.Model, sum.Turns, sum.ToolCalls, sum.ExitCodes, float64(sum.ElapsedMS)/1000, sum.FinalAnswer)
	}()
	if maxTurns < 1 {
		return errdefs.New(errdefs.ErrInvalidArgument, "use 1 or more", "--max-turns %d", maxTurns)
	}
	// Fail fast, before any pull, when the model server is not there.
	if err := probeOllama(ctx, baseURL); err != nil {
		a.logf("[error] %v", err)
		return err
	}
	env, _, err := a.demoEnvironment(ctx, c)
	if err != nil {
		return err
	}
	sum.Environment = env
	a.logf("[setup] model %s at %s, guests boot %s", model, baseURL, env)
	messages := []chatMessage{
		{Role: "system", Content: "You are an agent with one tool, vm_run, which runs shell commands in a disposable Linux VM. Call it to find facts instead of guessing; answer briefly once you know."},
		{Role: "user", Content: prompt},
	}
	a.logf("[user] %s", prompt)
	for sum.Turns < maxTurns {
		sum.Turns++
		msg, err := chatCompletion(ctx, baseURL, model, messages)
		if err != nil {
			a.logf("[error] %v", err)
			return err
		}
		messages = append(messages, msg)
		if strings.TrimSpace(msg.Content) != "" {
			a.logf("[model] %s", strings.TrimSpace(msg.Content))
		}
		if len(msg.ToolCalls) == 0 {
			sum.FinalAnswer = strings.TrimSpace(msg.Content)
			return nil
		}
		for _, tc := range msg.ToolCalls {
			sum.ToolCalls++
			content := a.runToolCall(ctx, c, env, tc, &sum)
			messages = append(messages, chatMessage{Role: "tool", ToolCallID: tc.ID, Content: content})
		}
	}
	err = errdefs.New(errdefs.ErrUnavailable, "raise --max-turns or try another --model", "model gave no final answer within %d turns", maxTurns)
	a.logf("[error] %v", err)
	return err
}

// runToolCall runs one vm_run call and returns the tool message content.
func (a *app) runToolCall(ctx context.Context, c *pyro.Client, env string, tc chatToolCall, sum *ollamaSummary) string {
	fail := func(err error) string {
		a.logf("[result] error: %v", err)
		b, _ := json.Marshal(map[string]string{"error": errdefs.CategoryName(err) + ": " + err.Error()})
		return string(b)
	}
	if tc.Function.Name != "vm_run" {
		return fail(errdefs.New(errdefs.ErrInvalidArgument, "the only tool is vm_run", "unknown tool %q", tc.Function.Name))
	}
	var args struct {
		Command        string `json:"command"`
		TimeoutSeconds int    `json:"timeout_seconds"`
	}
	raw := tc.Function.Arguments
	var s string
	if json.Unmarshal(raw, &s) == nil {
		raw = json.RawMessage(s)
	}
	if err := json.Unmarshal(raw, &args); err != nil || strings.TrimSpace(args.Command) == "" {
		return fail(errdefs.New(errdefs.ErrInvalidArgument, `pass {"command": "..."}`, "bad vm_run arguments %s", string(tc.Function.Arguments)))
	}
	a.logf("[tool] vm_run %q", args.Command)
	r, err := c.RunInVM(ctx, pyro.RunOptions{Environment: env, ExecOptions: pyro.ExecOptions{Command: []string{args.Command}, TimeoutSeconds: args.TimeoutSeconds}})
	if err != nil {
		return fail(err)
	}
	sum.ExitCodes = append(sum.ExitCodes, r.ExitCode)
	a.logf("[result] exit=%d stdout=%q stderr=%q (%d ms)", r.ExitCode, clip(r.Stdout, 200), clip(r.Stderr, 200), r.TotalMS)
	b, _ := json.Marshal(map[string]any{
		"exit_code": r.ExitCode, "stdout": clip(r.Stdout, 4000), "stderr": clip(r.Stderr, 4000), "timed_out": r.TimedOut,
	})
	return string(b)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

var ollamaHint = "install and start Ollama (https://ollama.com; `ollama serve`, then `ollama pull llama3.2:3b`), or point --base-url at a running OpenAI-compatible server"

// probeOllama checks that something answers HTTP at baseURL.
func probeOllama(ctx context.Context, baseURL string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/v1/models", nil)
	if err != nil {
		return errdefs.Wrap(errdefs.ErrInvalidArgument, err, "pass --base-url http://HOST:PORT", "bad --base-url %q", baseURL)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return errdefs.Wrap(errdefs.ErrUnavailable, err, ollamaHint, "cannot reach Ollama at %s", baseURL)
	}
	resp.Body.Close()
	return nil
}

// chatCompletion sends one chat request with the vm_run tool.
func chatCompletion(ctx context.Context, baseURL, model string, messages []chatMessage) (chatMessage, error) {
	body, err := json.Marshal(map[string]any{
		"model": model, "messages": messages, "tools": []any{vmRunFunction}, "tool_choice": "auto", "stream": false,
	})
	if err != nil {
		return chatMessage{}, err
	}
	// Models on a CPU can take minutes per answer.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return chatMessage{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return chatMessage{}, errdefs.Wrap(errdefs.ErrUnavailable, err, ollamaHint, "cannot reach Ollama at %s", baseURL)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return chatMessage{}, errdefs.Wrap(errdefs.ErrUnavailable, err, "", "read chat response")
	}
	var cr chatResponse
	jerr := json.Unmarshal(data, &cr)
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(data))
		if jerr == nil && cr.Error != nil {
			msg = cr.Error.Message
		}
		hint := ""
		if resp.StatusCode == http.StatusNotFound {
			hint = "pull the model first: `ollama pull " + model + "`"
		}
		return chatMessage{}, errdefs.New(errdefs.ErrUnavailable, hint, "chat completion: HTTP %d: %s", resp.StatusCode, clip(msg, 500))
	}
	if jerr != nil || len(cr.Choices) == 0 {
		return chatMessage{}, errdefs.New(errdefs.ErrUnavailable, "check that --base-url serves the OpenAI chat API", "unexpected chat response: %s", clip(string(data), 500))
	}
	msg := cr.Choices[0].Message
	if msg.Role == "" {
		msg.Role = "assistant"
	}
	return msg, nil
}
