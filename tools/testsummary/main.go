// Command testsummary reads `go test -json` on stdin, prints each test's
// verdict and failing output as it goes, and closes with one line:
// "N passed, N failed, N skipped". It exits non-zero when anything failed.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

func main() {
	var passed, failed, skipped int
	var failedNames []string
	output := map[string][]string{} // buffered output per test, shown on failure or skip
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<24)
	buildFailed := false
	for in.Scan() {
		line := in.Text()
		var e event
		if json.Unmarshal([]byte(line), &e) != nil || e.Action == "" {
			fmt.Println(line) // build errors and other non-JSON lines
			if strings.Contains(line, "build failed") || strings.HasPrefix(line, "#") {
				buildFailed = true
			}
			continue
		}
		key := e.Package + " " + e.Test
		switch e.Action {
		case "output":
			output[key] = append(output[key], e.Output)
			if e.Test == "" && (strings.HasPrefix(e.Output, "FAIL") || strings.Contains(e.Output, "[build failed]")) {
				fmt.Print(e.Output)
			}
		case "pass", "fail", "skip":
			if e.Test == "" {
				if e.Action == "fail" && len(output[key]) > 0 {
					fmt.Print(strings.Join(output[key], ""))
				}
				delete(output, key)
				continue
			}
			short := e.Package[strings.LastIndex(e.Package, "/")+1:] + "." + e.Test
			switch e.Action {
			case "pass":
				passed++
				fmt.Printf("PASS  %s (%.2fs)\n", short, e.Elapsed)
				// A passing test's output is hidden, except the lines it
				// marks as its summary (the MCP conformance suite's totals).
				for _, o := range output[key] {
					if i := strings.Index(o, "[summary] "); i >= 0 {
						fmt.Printf("      %s", o[i+len("[summary] "):])
					}
				}
			case "fail":
				failed++
				failedNames = append(failedNames, short)
				fmt.Printf("FAIL  %s (%.2fs)\n%s", short, e.Elapsed, strings.Join(output[key], ""))
			case "skip":
				skipped++
				reason := ""
				for _, o := range output[key] {
					if t := strings.TrimSpace(o); t != "" && !strings.HasPrefix(t, "=== ") && !strings.HasPrefix(t, "--- ") {
						reason = t
					}
				}
				fmt.Printf("SKIP  %s: %s\n", short, reason)
			}
			delete(output, key)
		}
	}
	if len(failedNames) > 0 {
		fmt.Printf("\nfailed: %s\n", strings.Join(failedNames, ", "))
	}
	if buildFailed && failed == 0 {
		failed++
	}
	fmt.Printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped)
	if failed > 0 {
		os.Exit(1)
	}
}
