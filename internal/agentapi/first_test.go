package agentapi

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
)

// What the host encodes is what the agent decodes, field for field.
func TestFirstRequestRoundTrip(t *testing.T) {
	in := FirstRequest{
		Identity: IdentityRequest{Entropy: []byte{1, 2, 3, 0, 255}, UnixNano: 1 << 62, Hostname: "pyro-0a1b2c3d",
			MachineID: strings.Repeat("f", 32), MAC: "52:54:00:12:34:56", MountWorkspace: true, WorkspaceBytes: 5 << 30,
			WorkspaceLayered: true, Timings: true},
		Exec: &ExecRequest{Argv: []string{"a", "", "c d"}, Env: map[string]string{"K": "v", "E": ""}, Cwd: "/w",
			TimeoutMS: 7, MaxOutputBytes: 9, Timings: true},
	}
	frame, err := EncodeFirstRequest(in)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(frame, []byte(FirstMagic)) {
		t.Fatalf("frame starts %q", frame[:4])
	}
	out, err := ReadFirstRequest(bytes.NewReader(frame[len(FirstMagic):]))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("decoded %+v\nwant %+v", out, in)
	}
	for _, bad := range []FirstRequest{
		{Identity: IdentityRequest{Inherited: true}},
		{Exec: &ExecRequest{Shell: "x", SecretEnv: map[string]string{"A": ""}}},
		{Exec: &ExecRequest{Shell: strings.Repeat("x", MaxFirstBytes)}},
	} {
		if _, err := EncodeFirstRequest(bad); err == nil {
			t.Errorf("encoded %+v", bad)
		}
	}
}

// A frame is read within its bounds whatever its bytes claim: a length
// past MaxFirstBytes, a string or an item count past the frame's end, and
// trailing bytes are refused before anything of their size is allocated.
func TestFirstFrameBounds(t *testing.T) {
	frame := func(body []byte) []byte { return binary.BigEndian.AppendUint32(nil, uint32(len(body))) }
	huge := binary.BigEndian.AppendUint32(nil, MaxFirstBytes+1)
	if _, err := ReadFirstRequest(bytes.NewReader(huge)); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("huge frame: %v", err)
	}
	// flags (with a command), two i64, then a string claiming 4 GiB.
	var e frameEncoder
	e.u32(firstHasExec)
	e.i64(1)
	e.i64(0)
	e.u32(0xffffffff)
	if _, err := ReadFirstRequest(bytes.NewReader(append(frame(e.b), e.b...))); err == nil {
		t.Fatal("a string past the frame was read")
	}
	// A whole identity, a command with an argv count of 2^31.
	e = frameEncoder{}
	e.u32(firstHasExec)
	e.i64(1)
	e.i64(0)
	for range 4 {
		e.str("x")
	}
	e.i64(0)
	e.i64(0)
	e.bool(false)
	e.str("")
	e.str("")
	e.u32(1 << 31)
	if _, err := ReadFirstRequest(bytes.NewReader(append(frame(e.b), e.b...))); err == nil || !strings.Contains(err.Error(), "count") {
		t.Fatalf("argv count: %v", err)
	}
	// Trailing bytes.
	e = frameEncoder{}
	e.u32(0)
	e.i64(1)
	e.i64(0)
	for range 4 {
		e.str("x")
	}
	e.u8(9)
	if _, err := ReadFirstRequest(bytes.NewReader(append(frame(e.b), e.b...))); err == nil || !strings.Contains(err.Error(), "after") {
		t.Fatalf("trailing: %v", err)
	}
	// A reply that is not a first-call frame, and a truncated one.
	if _, err := readFirstReply(bytes.NewReader([]byte("HTTP/1.1 200 OK\r\n")), IdentityRequest{}); err == nil {
		t.Fatal("an HTTP answer was taken as a reply")
	}
	ok, _ := EncodeFirstReply(IdentityResponse{Health: Health{AgentVersion: "v"}}, nil)
	if _, err := readFirstReply(bytes.NewReader(ok[:len(ok)-3]), IdentityRequest{}); err == nil {
		t.Fatal("a truncated reply was read")
	}
	// A reply that says nothing was mounted when the host asked for it.
	if _, err := readFirstReply(bytes.NewReader(ok), IdentityRequest{MountWorkspace: true}); err == nil {
		t.Fatal("an unmounted workspace was taken as mounted")
	}
}
