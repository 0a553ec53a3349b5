package agentapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// FuzzAgentReplies feeds arbitrary guest bytes to the host's decoders of
// agent replies: the exec event stream and every JSON reply type. Whatever
// the guest sends, decoding must not panic, output must stay within
// max_output_bytes and match what was streamed, lists must stay within
// MaxListItems, and every failure must carry an errdefs category.
//
//	go test -run XXX -fuzz FuzzAgentReplies -fuzztime 10m -parallel 1 ./internal/agentapi/
func FuzzAgentReplies(f *testing.F) {
	for _, s := range []string{
		`{"type":"stdout","data":"aGk="}` + "\n" + `{"type":"stderr","data":"eA=="}` + "\n" + `{"type":"exit","result":{"exit_code":3,"timed_out":true,"signal":"SIGKILL"}}` + "\n",
		`{"type":"exit","result":{"exit_code":0,"stdout":"forged","stdout_truncated":false}}`,
		`{"type":"error","error":{"error":"boom","category":"not_found","hint":"h"}}` + "\n",
		`{"type":"exit"}` + "\n",
		"\n\n" + `{"type":"stdout","data":"////"}` + "\n",
		`{"services":[{"name":"a","state":"running","argv":["x"],"pid":1,"exit_code":2}],"x":[1,2]}`,
		`{"shells":[{"shell_id":"abc","pid":2,"state":"running"}]}`,
		`{"shells":null}`,
		`{"shell_id":"a","output":"\u001b[0m","cursor":1,"next_cursor":2,"dropped":{"from":0,"to":1}}`,
		`{"agent_version":"v","vcpus":1,"mem_total_kib":9}`,
		`{"name":"a","lines":["x",""],"truncated":true}`,
		`{"error":"x","category":"already_exists"}`,
	} {
		f.Add([]byte(s), uint16(4))
	}
	f.Fuzz(func(t *testing.T, data []byte, maxOutput uint16) {
		limit := int64(maxOutput) + 1
		streamed := map[string]int{}
		res, err := DecodeExecStream(bytes.NewReader(data), limit, func(s string, p []byte) {
			if s != EventStdout && s != EventStderr {
				t.Fatalf("output for stream %q", s)
			}
			streamed[s] += len(p)
		})
		if err != nil {
			if errdefs.Category(err) == nil {
				t.Fatalf("uncategorised error %v", err)
			}
		} else {
			if int64(len(res.Stdout)) > limit || int64(len(res.Stderr)) > limit {
				t.Fatalf("output past the cap: %d/%d > %d", len(res.Stdout), len(res.Stderr), limit)
			}
			if streamed[EventStdout] != len(res.Stdout) || streamed[EventStderr] != len(res.Stderr) {
				t.Fatalf("result %d/%d differs from what was streamed %v", len(res.Stdout), len(res.Stderr), streamed)
			}
		}

		replies := []any{new(Health), new(ServiceList), new(ShellList), new(ServiceStatus), new(ServiceLogs),
			new(ShellReadResponse), new(ShellInfo), new(PushResult), new(SecretsResponse), new(ServiceReset)}
		for _, out := range replies {
			err := DecodeReply(bytes.NewReader(data), int64(len(data))+int64(maxOutput%2), out)
			if err != nil && !errors.Is(err, errdefs.ErrUnavailable) {
				t.Fatalf("%T: %v is not unavailable", out, err)
			}
		}
		var l ServiceList
		if json.Unmarshal(data, &l) == nil && len(l.Services) > MaxListItems {
			t.Fatalf("%d services", len(l.Services))
		}
		var er ErrorResponse
		if json.Unmarshal(data, &er) == nil {
			if e := er.Err(int(maxOutput)); errdefs.Category(e) == nil || errdefs.Hint(e) != er.Hint {
				t.Fatalf("error reply %+v -> %v", er, e)
			}
		}
	})
}
