package mcpserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// StdioTransport serves MCP over newline-delimited JSON-RPC like
// mcp.StdioTransport, but survives bad frames. The go-sdk's stdio
// connection ends the whole session on the first line that is not a valid
// JSON-RPC message (bad JSON, a wrong "jsonrpc" tag, a non-string method,
// an empty batch, a batch after batching was removed from the protocol),
// so one stray line from a client or a proxy would drop the session. This
// transport checks every line first, answers a bad one itself with the
// JSON-RPC error (-32700 parse error or -32600 invalid request, id null
// unless the frame carried a usable id) and hands only valid lines on to
// the SDK's connection.
type StdioTransport struct {
	// In and Out default to os.Stdin and os.Stdout.
	In  io.Reader
	Out io.Writer
	// MaxLineLength bounds one inbound line; 0 means
	// mcp.DefaultMaxLineLength. A longer line is answered with -32600 and
	// skipped.
	MaxLineLength int
}

// JSON-RPC 2.0 error codes the transport answers with.
const (
	codeParseError     = -32700
	codeInvalidRequest = -32600
	// maxDepth is the go-sdk decoder's nesting limit; a deeper frame would
	// end its session, so it is refused here first.
	maxDepth = 1000
	// noBatchVersion is the first protocol version without JSON-RPC batches.
	noBatchVersion = "2025-06-18"
)

// Connect implements mcp.Transport.
func (t *StdioTransport) Connect(ctx context.Context) (mcp.Connection, error) {
	in, out := t.In, t.Out
	if in == nil {
		in = os.Stdin
	}
	if out == nil {
		out = os.Stdout
	}
	limit := t.MaxLineLength
	if limit <= 0 {
		limit = mcp.DefaultMaxLineLength
	}
	pr, pw := io.Pipe()
	f := &frameFilter{w: &snoopWriter{w: out}, limit: limit}
	f.w.f = f
	go f.run(in, pw)
	// The SDK's own connection is used unwrapped so that it keeps learning
	// the negotiated protocol version; lines are already bounded here.
	return (&mcp.IOTransport{Reader: pr, Writer: nopCloser{f.w}, MaxLineLength: -1}).Connect(ctx)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// frameFilter sits between the input and the SDK's connection.
type frameFilter struct {
	w     *snoopWriter
	limit int

	mu sync.Mutex
	// initID is the id of the first initialize request passed on, while its
	// response is outstanding; version is the protocol version it
	// negotiated ("" until then).
	initID      *jsonrpc.ID
	initPending bool
	version     string
	// cancels drops the responses to cancelled requests (cancel.go).
	cancels cancels
}

// run copies valid lines from in to pw until in ends or pw is closed.
func (f *frameFilter) run(in io.Reader, pw *io.PipeWriter) {
	br := bufio.NewReaderSize(in, 64*1024)
	for {
		line, tooLong, err := readLine(br, f.limit)
		if tooLong {
			f.reply(nil, codeInvalidRequest, "invalid request: frame exceeds the maximum line length")
		} else if len(bytes.TrimSpace(line)) > 0 {
			if ok := f.check(bytes.TrimSpace(line)); ok {
				if _, werr := pw.Write(append(bytes.TrimSpace(line), '\n')); werr != nil {
					return
				}
			}
		}
		if err != nil {
			pw.CloseWithError(err)
			return
		}
	}
}

// readLine reads one line (without its newline) of at most limit bytes; a
// longer line is consumed up to its newline and reported as tooLong.
func readLine(br *bufio.Reader, limit int) (line []byte, tooLong bool, err error) {
	for {
		chunk, err := br.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(chunk) > limit+1 {
				tooLong, line = true, nil
			} else {
				line = append(line, chunk...)
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		if err == io.EOF && len(line) > 0 {
			err = nil // a last line without a newline still counts; the next read reports EOF
		}
		return line, tooLong, err
	}
}

// check reports whether line may go on to the SDK; if not, it has answered
// the client already.
func (f *frameFilter) check(line []byte) bool {
	msgs, bad := checkFrame(line, f.batchesAllowed)
	if bad != nil {
		if bad.code != 0 {
			f.reply(bad.id, bad.code, bad.message)
		}
		return false
	}
	for _, msg := range msgs {
		f.sawInitialize(msg)
		f.sawInbound(msg)
	}
	return true
}

// batchesAllowed says whether a JSON-RPC batch may be passed on now, and
// why not.
func (f *frameFilter) batchesAllowed() (bool, string) {
	f.mu.Lock()
	batchOK := !f.initPending && (f.version == "" || f.version < noBatchVersion)
	version := f.version
	f.mu.Unlock()
	switch {
	case batchOK:
		return true, ""
	case version == "":
		// The negotiated version is not known yet; the SDK may already
		// have switched to one without batches.
		return false, "invalid request: no JSON-RPC batch while initialize is being answered"
	default:
		return false, "invalid request: JSON-RPC batches are not supported in protocol version " + version + " (they were removed in " + noBatchVersion + ")"
	}
}

// badFrame is the JSON-RPC error a frame is answered with; code 0 means
// the frame is dropped without an answer.
type badFrame struct {
	id      any
	code    int
	message string
}

// checkFrame decodes one frame (a message or a batch) the way the go-sdk
// will, plus the rules it does not enforce, and returns its messages or the
// error to answer it with. It is shared by the stdio and HTTP transports.
func checkFrame(line []byte, batches func() (bool, string)) ([]jsonrpc.Message, *badFrame) {
	if !json.Valid(line) {
		return nil, &badFrame{nil, codeParseError, "parse error: the frame is not valid JSON"}
	}
	if tooDeep(line) {
		return nil, &badFrame{nil, codeParseError, "parse error: the frame nests deeper than 1000 levels"}
	}
	if line[0] != '[' {
		msg, err := decode(line)
		if errors.Is(err, errErrorResponse) {
			return nil, &badFrame{} // never answer an answer: two peers could ping-pong
		}
		if err != nil {
			return nil, &badFrame{idOf(line), codeInvalidRequest, "invalid request: " + err.Error()}
		}
		return []jsonrpc.Message{msg}, nil
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(line, &raws); err != nil {
		return nil, &badFrame{nil, codeInvalidRequest, "invalid request: " + err.Error()}
	}
	if len(raws) == 0 {
		return nil, &badFrame{nil, codeInvalidRequest, "invalid request: empty batch"}
	}
	if ok, why := batches(); !ok {
		return nil, &badFrame{nil, codeInvalidRequest, why}
	}
	seen := map[jsonrpc.ID]bool{}
	msgs := make([]jsonrpc.Message, 0, len(raws))
	for _, raw := range raws {
		msg, err := decode(raw)
		if err != nil {
			return nil, &badFrame{nil, codeInvalidRequest, "invalid request: batch member: " + err.Error()}
		}
		if req, ok := msg.(*jsonrpc.Request); ok && req.ID.IsValid() {
			if seen[req.ID] {
				return nil, &badFrame{nil, codeInvalidRequest, "invalid request: duplicate id in batch"}
			}
			seen[req.ID] = true
		}
		msgs = append(msgs, msg)
	}
	return msgs, nil
}

// errErrorResponse marks an error response without a usable id.
var errErrorResponse = errors.New("error response without an id")

// decode is the go-sdk's own decoding (so that whatever passes here also
// passes there) plus MCP's rule on ids, which the SDK does not enforce: a
// request's id is a string or an integer, never null (the SDK would take a
// null id for a notification and silently truncate 1.5 to 1).
func decode(raw []byte) (jsonrpc.Message, error) {
	msg, err := jsonrpc.DecodeMessage(raw)
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		m = nil
	}
	idRaw, hasID := m["id"]
	_, hasMethod := m["method"]
	_, hasError := m["error"]
	if err != nil && !hasMethod && hasError && !validID(idRaw) {
		return nil, errErrorResponse
	}
	if err != nil {
		return nil, err
	}
	if hasID && !validID(idRaw) {
		return nil, errors.New("id must be a string or an integer")
	}
	return msg, nil
}

// validID reports whether raw is a JSON string or integer.
func validID(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return false
	}
	if raw[0] == '"' {
		return true // DecodeMessage has accepted it as a string
	}
	var n json.Number
	if json.Unmarshal(raw, &n) != nil {
		return false
	}
	_, err := n.Int64()
	return err == nil
}

// sawInitialize remembers the first initialize request so that the
// protocol version it negotiates can be read from its response.
func (f *frameFilter) sawInitialize(msg jsonrpc.Message) {
	req, ok := msg.(*jsonrpc.Request)
	if !ok || req.Method != "initialize" || !req.ID.IsValid() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.version == "" && !f.initPending {
		id := req.ID
		f.initID, f.initPending = &id, true
	}
}

// sawInbound and outbound track requests for cancels under the lock.
func (f *frameFilter) sawInbound(msg jsonrpc.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cancels.sawInbound(msg)
}

func (f *frameFilter) outbound(line []byte) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cancels.outbound(line)
}

// sawResponse reads the negotiated version from the initialize response.
func (f *frameFilter) sawResponse(line []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.initPending {
		return
	}
	msg, err := jsonrpc.DecodeMessage(bytes.TrimSpace(line))
	resp, ok := msg.(*jsonrpc.Response)
	if err != nil || !ok || resp.ID != *f.initID {
		return
	}
	f.initPending = false
	if resp.Error != nil {
		return
	}
	var r struct {
		ProtocolVersion string `json:"protocolVersion"`
	}
	if json.Unmarshal(resp.Result, &r) == nil {
		f.version = r.ProtocolVersion
	}
}

// reply writes a JSON-RPC error response with id (null when nil).
func (f *frameFilter) reply(id any, code int, message string) {
	if b := errorResponse(id, code, message); b != nil {
		_, _ = f.w.Write(append(b, '\n'))
	}
}

// errorResponse encodes a JSON-RPC error response with id (null when nil).
func errorResponse(id any, code int, message string) []byte {
	type rpcError struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	b, err := json.Marshal(struct {
		JSONRPC string   `json:"jsonrpc"`
		ID      any      `json:"id"`
		Error   rpcError `json:"error"`
	}{"2.0", id, rpcError{code, message}})
	if err != nil {
		return nil
	}
	return b
}

// idOf returns a bad frame's id when it is a string or a number, so the
// client can match the error to its request; otherwise nil (null).
func idOf(line []byte) any {
	var m map[string]json.RawMessage
	if json.Unmarshal(line, &m) != nil {
		return nil
	}
	var id any
	dec := json.NewDecoder(bytes.NewReader(m["id"]))
	dec.UseNumber()
	if dec.Decode(&id) != nil {
		return nil
	}
	switch id.(type) {
	case string, json.Number:
		return id
	}
	return nil
}

// tooDeep reports whether valid JSON nests deeper than maxDepth.
func tooDeep(b []byte) bool {
	depth, inString, escaped := 0, false, false
	for _, c := range b {
		switch {
		case escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case inString:
		case c == '{' || c == '[':
			depth++
			if depth > maxDepth {
				return true
			}
		case c == '}' || c == ']':
			depth--
		}
	}
	return false
}

// snoopWriter serialises whole-line writes from the SDK's connection and
// the filter's error replies, and shows the filter the server's
// responses while it waits for the initialize response.
type snoopWriter struct {
	mu sync.Mutex
	w  io.Writer
	f  *frameFilter
}

func (s *snoopWriter) Write(p []byte) (int, error) {
	q := s.f.standardCode(s.f.outbound(p))
	if len(q) == 0 {
		return len(p), nil // the response to a cancelled request
	}
	s.mu.Lock()
	_, err := s.w.Write(q)
	s.mu.Unlock()
	if err != nil {
		return 0, err
	}
	s.f.sawResponse(p)
	return len(p), nil
}

// standardCode gives an error response the go-sdk sends before a
// successful initialize (a call other than initialize or ping: "method is
// invalid during session initialization") the standard code -32600
// instead of its 0, which is no JSON-RPC error code.
func (f *frameFilter) standardCode(line []byte) []byte {
	f.mu.Lock()
	initialized := f.version != ""
	f.mu.Unlock()
	if initialized || !bytes.Contains(line, []byte(`"error"`)) {
		return line
	}
	msg, err := jsonrpc.DecodeMessage(bytes.TrimSpace(line))
	resp, ok := msg.(*jsonrpc.Response)
	if err != nil || !ok {
		return line
	}
	var we *jsonrpc.Error
	if !errors.As(resp.Error, &we) || we.Code != 0 {
		return line
	}
	we.Code = codeInvalidRequest
	b, err := jsonrpc.EncodeMessage(resp)
	if err != nil {
		return line
	}
	return append(b, '\n')
}
