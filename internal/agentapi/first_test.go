package agentapi

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
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

// A fork's question (what the guest still runs) and its answer travel in
// the first-call frames, every field as the JSON call carries it; an
// answer too large for a frame is left out (the host then asks), and one
// not asked for is refused.
func TestFirstInheritedRoundTrip(t *testing.T) {
	req := firstIdentityForTest()
	req.Inherited = true
	frame, err := EncodeFirstRequest(FirstRequest{Identity: req})
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadFirstRequest(bytes.NewReader(frame[len(FirstMagic):]))
	if err != nil || !got.Identity.Inherited {
		t.Fatalf("request %+v, %v", got.Identity, err)
	}
	code, at := 137, time.Unix(1700000000, 123).UTC()
	east := time.Unix(1700000001, 5).In(time.FixedZone("", 5*3600+1800))
	in := &Inherited{
		Services: []ServiceStatus{
			{Name: "web", State: ServiceRunning, Argv: []string{"/bin/sh", "-c", "x"}, Cwd: "/workspace", PID: 42,
				Readiness: &ServiceReadiness{Type: "http", URL: "http://127.0.0.1:8080/", ExpectStatus: 204, Path: "p", Address: "a", Command: "c"},
				StartedAt: at, ReadyAt: &east, RestartCount: 2, LastProbeError: "refused"},
			{Name: "old", State: ServiceExited, Argv: []string{}, ExitCode: &code, Signal: "SIGKILL", StoppedAt: &at, Error: "e"},
		},
		Shells: []ShellInfo{{ShellID: "sh1", PID: 7, Cwd: "/", Cols: 80, Rows: 24, State: "running", Argv: []string{"bash"}, StartedAt: east, EndCursor: 99}},
		Jobs:   []JobInfo{{JobID: "j1", Command: "make", State: "exited", ExitCode: &code, TimedOut: true, StartedAt: at, EndCursor: 5}},
	}
	reply, err := EncodeFirstReply(IdentityResponse{Health: Health{AgentVersion: "v", FirstInherited: true}, Inherited: in}, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := readFirstReply(bytes.NewReader(reply), req)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(in)
	have, _ := json.Marshal(resp.Inherited)
	if string(want) != string(have) || !resp.Health.FirstInherited {
		t.Fatalf("inherited %s\nwant %s (health %+v)", have, want, resp.Health)
	}
	// Not asked for: refused.
	if _, err := readFirstReply(bytes.NewReader(reply), firstIdentityForTest()); err == nil {
		t.Fatal("an inherited answer nobody asked for was taken")
	}
	// Too large for a frame: the reply goes without it.
	big := &Inherited{Jobs: []JobInfo{{JobID: strings.Repeat("j", MaxFirstBytes)}}}
	reply, err = EncodeFirstReply(IdentityResponse{Health: Health{FirstInherited: true}, Inherited: big}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp, err = readFirstReply(bytes.NewReader(reply), req); err != nil || resp.Inherited != nil || !resp.Health.FirstInherited {
		t.Fatalf("large answer: %+v, %v", resp, err)
	}
	// An agent of 0a1df22 ignores the question: no answer, no claim.
	reply, _ = EncodeFirstReply(IdentityResponse{Health: Health{AgentVersion: "v"}}, nil)
	if resp, err = readFirstReply(bytes.NewReader(reply), req); err != nil || resp.Inherited != nil || resp.Health.FirstInherited {
		t.Fatalf("older agent: %+v, %v", resp, err)
	}
}

// The inherited answer's counts and lengths are checked against the bytes
// left: a service count of 2^31, a truncated list, a lying zone offset.
func TestFirstInheritedBounds(t *testing.T) {
	req := firstIdentityForTest()
	req.Inherited = true
	head := func() frameEncoder {
		var e frameEncoder
		e.u8(0)
		e.u32(firstHasInherited)
		e.str("")
		e.str("v")
		e.str("k")
		for range 6 {
			e.i64(0)
		}
		return e
	}
	reply := func(e frameEncoder) []byte {
		b, err := e.frame()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	e := head()
	e.u32(1 << 31)
	if _, err := readFirstReply(bytes.NewReader(reply(e)), req); err == nil || !strings.Contains(err.Error(), "count") {
		t.Fatalf("service count: %v", err)
	}
	e = head()
	e.u32(0)
	e.u32(0)
	e.u32(1) // one job, then nothing
	e.str("j1")
	if _, err := readFirstReply(bytes.NewReader(reply(e)), req); err == nil {
		t.Fatal("a truncated job was read")
	}
	e = head()
	e.u32(0)
	e.u32(1)
	e.str("sh")
	e.i64(1)
	e.str("/")
	e.i64(80)
	e.i64(24)
	e.str("running")
	e.bool(false)
	e.strs(nil)
	e.bool(true)
	e.i64(1)
	e.i64(1 << 40) // offset
	e.i64(0)
	e.u32(0)
	if _, err := readFirstReply(bytes.NewReader(reply(e)), req); err == nil || !strings.Contains(err.Error(), "offset") {
		t.Fatalf("zone offset: %v", err)
	}
	// A strings count past the frame's end inside a service.
	e = head()
	e.u32(1)
	e.str("web")
	e.str("running")
	e.bool(true)
	e.u32(0xffffffff)
	if _, err := readFirstReply(bytes.NewReader(reply(e)), req); err == nil || !strings.Contains(err.Error(), "count") {
		t.Fatalf("argv count: %v", err)
	}
}

func firstIdentityForTest() IdentityRequest {
	return IdentityRequest{Entropy: []byte{1, 2}, UnixNano: 1, Hostname: "pyro-0a1b2c3d", MachineID: strings.Repeat("f", 32)}
}

// The least sizes the inherited counts are checked against are exactly
// what an item with nothing in it takes, so no real answer is refused.
func TestFirstInheritedLeastItems(t *testing.T) {
	for i, in := range []*Inherited{{Services: []ServiceStatus{{}}}, {Shells: []ShellInfo{{}}}, {Jobs: []JobInfo{{}}}} {
		var e frameEncoder
		e.inherited(in)
		if size, least := len(e.b)-12, []int{minService, minShell, minJob}[i]; size != least {
			t.Errorf("list %d: an empty item takes %d bytes, counts are checked against %d", i, size, least)
		}
		d := frameDecoder{b: e.b}
		if got := d.inherited(); d.err != nil || len(got.Services)+len(got.Shells)+len(got.Jobs) != 1 {
			t.Fatalf("list %d: %+v, %v", i, got, d.err)
		}
	}
}
