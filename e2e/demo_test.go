package e2e

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestDemo(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	home, env := isolatedHome(t)
	r := pyro(t, env, "demo")
	t.Logf("pyro demo (%s):\n%s%s", r.elapsed, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	for _, want := range []string{
		"[1/7] run:", "Linux", "[2/7] workspace create", "[3/7] workspace exec", "[4/7] workspace diff", "added notes.txt",
		"modified hello.txt", "[5/7] snapshot create", "[6/7] workspace reset", "reset_count 1", "[7/7] workspace delete",
		"every step worked",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(home, "workspaces")); len(ents) != 0 {
		t.Errorf("workspaces left: %v", ents)
	}
	if left := vmDirs(t, home); len(left) != 0 {
		t.Errorf("vm dirs left: %v", left)
	}
}

// fakeChat is a scripted OpenAI-compatible chat server. The model is faked
// because Ollama (and any model) cannot be installed on the build machines;
// what this test checks is pyro's side of the loop: the request shape, that
// the tool call really runs in a guest, and that the result goes back to the
// model as a tool message.
type fakeChat struct {
	mu          sync.Mutex
	requests    int
	toolResults []string
	badRequests []string
}

func (f *fakeChat) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v1/models" {
		_, _ = w.Write([]byte(`{"object":"list","data":[{"id":"fake-model","object":"model"}]}`))
		return
	}
	if r.URL.Path != "/v1/chat/completions" || r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	var req struct {
		Model    string `json:"model"`
		Messages []struct {
			Role       string `json:"role"`
			Content    string `json:"content"`
			ToolCallID string `json:"tool_call_id"`
		} `json:"messages"`
		Tools []struct {
			Type     string `json:"type"`
			Function struct {
				Name       string         `json:"name"`
				Parameters map[string]any `json:"parameters"`
			} `json:"function"`
		} `json:"tools"`
		ToolChoice string `json:"tool_choice"`
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		f.badRequests = append(f.badRequests, err.Error())
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if req.Model != "fake-model" || len(req.Tools) != 1 || req.Tools[0].Function.Name != "vm_run" || req.ToolChoice != "auto" {
		f.badRequests = append(f.badRequests, "unexpected request: model/tools/tool_choice")
	}
	var toolMsg string
	for _, m := range req.Messages {
		if m.Role == "tool" {
			if m.ToolCallID != "call_1" {
				f.badRequests = append(f.badRequests, "tool message for "+m.ToolCallID)
			}
			toolMsg = m.Content
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if toolMsg == "" {
		// First turn: ask for one vm_run call (arguments as a JSON string,
		// as the OpenAI API and Ollama send them).
		_, _ = w.Write([]byte(`{"id":"c1","object":"chat.completion","model":"fake-model","choices":[{"index":0,"finish_reason":"tool_calls",
			"message":{"role":"assistant","content":"","tool_calls":[{"id":"call_1","type":"function","function":{"name":"vm_run","arguments":"{\"command\":\"echo hi\"}"}}]}}]}`))
		return
	}
	f.toolResults = append(f.toolResults, toolMsg)
	_, _ = w.Write([]byte(`{"id":"c2","object":"chat.completion","model":"fake-model","choices":[{"index":0,"finish_reason":"stop",
		"message":{"role":"assistant","content":"The guest said hi."}}]}`))
}

func TestDemoOllama(t *testing.T) {
	requireE2E(t)
	ensureEnv(t, baseEnv)
	_, env := isolatedHome(t)
	fake := &fakeChat{}
	srv := httptest.NewServer(fake) // listens on 127.0.0.1
	defer srv.Close()

	r := pyro(t, env, "demo", "ollama", "--model", "fake-model", "--base-url", srv.URL)
	t.Logf("pyro demo ollama (%s):\n%s%s", r.elapsed, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.badRequests) > 0 {
		t.Errorf("fake server saw: %v", fake.badRequests)
	}
	if fake.requests != 2 || len(fake.toolResults) != 1 {
		t.Fatalf("requests %d, tool results %v", fake.requests, fake.toolResults)
	}
	var res struct {
		ExitCode int    `json:"exit_code"`
		Stdout   string `json:"stdout"`
	}
	if err := json.Unmarshal([]byte(fake.toolResults[0]), &res); err != nil || res.ExitCode != 0 || res.Stdout != "hi\n" {
		t.Fatalf("tool result sent to the model: %q (%v)", fake.toolResults[0], err)
	}
	for _, want := range []string{
		`[tool] vm_run "echo hi"`, "[result] exit=0", "[model] The guest said hi.",
		`summary: model=fake-model turns=2 tool_calls=1 exit_codes=[0] `, `final_answer="The guest said hi."`,
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

func TestDemoOllamaUnreachable(t *testing.T) {
	requireE2E(t)
	_, env := isolatedHome(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	r := pyro(t, env, "demo", "ollama", "--base-url", url)
	t.Logf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
	if r.code == 0 {
		t.Fatal("exit 0 without a model server")
	}
	if !strings.Contains(r.stdout, "cannot reach Ollama") || !strings.Contains(r.stdout, "summary: model=llama3.2:3b turns=0 tool_calls=0") {
		t.Errorf("stdout: %q", r.stdout)
	}
	if !strings.Contains(r.stderr, "hint: ") || !strings.Contains(r.stderr, "--base-url") {
		t.Errorf("stderr: %q", r.stderr)
	}
}
