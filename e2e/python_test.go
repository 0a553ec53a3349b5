package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pythonResult is one record of python/tests/jsonrun.py.
type pythonResult struct {
	ID      string  `json:"id"`
	Outcome string  `json:"outcome"` // pass, fail, skip
	Message string  `json:"message"`
	Seconds float64 `json:"seconds"`
}

// TestPython runs the Python SDK's test suite (python/tests, stdlib unittest)
// with the python3 on PATH and reports every Python test as a subtest, so the
// suite's results count in scripts/test.sh's summary. The fast tests (argument
// and error mapping, the contract's signatures) always run; the real-guest
// tests get PYRO_E2E=1 and PYRO_BIN only when this package's end-to-end tests
// run, and skip themselves, saying why, otherwise.
func TestPython(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not on PATH; the Python SDK's tests need Python >= 3.10")
	}
	dir, err := filepath.Abs(filepath.Join("..", "python"))
	if err != nil {
		t.Fatal(err)
	}
	results := filepath.Join(t.TempDir(), "results.json")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "-m", "tests.jsonrun", results)
	cmd.Dir = dir
	env := []string{"PYTHONPATH=" + dir, "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PYRO_E2E=") && !strings.HasPrefix(kv, "PYRO_BIN=") && !strings.HasPrefix(kv, "PYTHONPATH=") {
			env = append(env, kv)
		}
	}
	if skipWhy == "" {
		env = append(env, "PYRO_E2E=1", "PYRO_BIN="+pyroBin)
	} else {
		t.Logf("Python real-guest tests will skip: %s", skipWhy)
	}
	cmd.Env = env
	start := time.Now()
	out, runErr := cmd.CombinedOutput()
	elapsed := time.Since(start).Round(time.Millisecond)

	data, err := os.ReadFile(results)
	if err != nil {
		t.Fatalf("python tests wrote no results (%v, after %s): %v\n%s", runErr, elapsed, err, out)
	}
	var recs []pythonResult
	if err := json.Unmarshal(data, &recs); err != nil {
		t.Fatalf("python results: %v\n%s", err, out)
	}
	var passed, failed, skipped int
	for _, r := range recs {
		r := r
		name := strings.TrimPrefix(r.ID, "tests.")
		t.Run(name, func(t *testing.T) {
			switch r.Outcome {
			case "pass":
				passed++
			case "skip":
				skipped++
				t.Skip(r.Message)
			default:
				failed++
				t.Errorf("failed after %.1fs:\n%s", r.Seconds, r.Message)
			}
		})
	}
	summary := fmt.Sprintf("python (%s): %d passed, %d failed, %d skipped in %s", py, passed, failed, skipped, elapsed)
	t.Log(summary)
	if runErr != nil && failed == 0 {
		t.Fatalf("python tests exited with %v but reported no failure:\n%s", runErr, out)
	}
	if failed > 0 {
		t.Logf("full python output:\n%s", out)
	}
}
