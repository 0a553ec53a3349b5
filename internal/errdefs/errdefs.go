// Package errdefs holds pyro's few error categories. Every error that leaves
// the SDK wraps exactly one of them so callers branch with errors.Is, never by
// matching text.
//
// One table (below) maps each category to its wire name (JSON output, the
// agent and supervisor protocols, MCP tool errors), its HTTP status (agent
// and supervisor replies) and the CLI's exit code. Every other place uses
// these functions instead of its own switch.
package errdefs

import (
	"errors"
	"fmt"
	"net/http"
)

// The categories. Test with errors.Is(err, errdefs.ErrNotFound).
var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrUnavailable        = errors.New("unavailable")
)

// A category's row of the table.
type row struct {
	category error
	// name is stable snake_case: part of the JSON output and the wire
	// protocols, never renamed.
	name string
	// status is unique per row, so a reply without a readable body still
	// maps back to its category.
	status int
	// exit is the CLI's exit code. pyro run passes the guest command's own
	// exit code through, so these only apply to pyro's own failures.
	exit int
}

// table is the one mapping. The last row is for errors with no category:
// pyro failed in a way it did not classify.
var table = [...]row{
	{ErrInvalidArgument, "invalid_argument", http.StatusBadRequest, 2},
	{ErrNotFound, "not_found", http.StatusNotFound, 3},
	{ErrAlreadyExists, "already_exists", http.StatusConflict, 4},
	{ErrFailedPrecondition, "failed_precondition", http.StatusPreconditionFailed, 5},
	{ErrUnavailable, "unavailable", http.StatusServiceUnavailable, 6},
	{nil, NameInternal, http.StatusInternalServerError, 1},
}

// NameInternal is the wire name of an error without a category.
const NameInternal = "internal"

// Categories lists the categories in table order (for tests and docs).
func Categories() []error {
	out := make([]error, 0, len(table)-1)
	for _, r := range table[:len(table)-1] {
		out = append(out, r.category)
	}
	return out
}

func rowOf(err error) row {
	for _, r := range table[:len(table)-1] {
		if errors.Is(err, r.category) {
			return r
		}
	}
	return table[len(table)-1]
}

// Category returns the category err belongs to, or nil when it has none.
func Category(err error) error { return rowOf(err).category }

// CategoryName is the category's stable snake_case wire name, "internal"
// when err has none.
func CategoryName(err error) string { return rowOf(err).name }

// HTTPStatus is the status of a reply that carries err.
func HTTPStatus(err error) int { return rowOf(err).status }

// ExitCode maps err's category to the CLI's exit code (1 without one).
func ExitCode(err error) int { return rowOf(err).exit }

// FromName maps a wire name back to its category; unknown names and
// "internal" give nil.
func FromName(name string) error {
	for _, r := range table {
		if r.name == name {
			return r.category
		}
	}
	return nil
}

// FromHTTPStatus maps a reply status back to its category; statuses not in
// the table give nil.
func FromHTTPStatus(status int) error {
	for _, r := range table {
		if r.status == status {
			return r.category
		}
	}
	return nil
}

// hinted is an error with a category and an action a person can take.
type hinted struct {
	category error
	msg      string
	hint     string
	cause    error
}

func (e *hinted) Error() string {
	s := e.msg
	if e.cause != nil {
		s += ": " + e.cause.Error()
	}
	if e.hint != "" {
		s += " (hint: " + e.hint + ")"
	}
	return s
}

// Is lets errors.Is match the category as well as the wrapped cause.
func (e *hinted) Is(target error) bool { return target == e.category }

func (e *hinted) Unwrap() error { return e.cause }

// New returns an error of the given category with a message and an optional hint.
func New(category error, hint, format string, args ...any) error {
	return &hinted{category: category, msg: fmt.Sprintf(format, args...), hint: hint}
}

// Wrap is New with an underlying cause, kept for errors.Is/As.
func Wrap(category error, cause error, hint, format string, args ...any) error {
	return &hinted{category: category, msg: fmt.Sprintf(format, args...), hint: hint, cause: cause}
}

// Hint returns the first hint in err's chain, "" when there is none.
func Hint(err error) string {
	for err != nil {
		var h *hinted
		if !errors.As(err, &h) {
			return ""
		}
		if h.hint != "" {
			return h.hint
		}
		err = h.cause
	}
	return ""
}

// Message is err's text without hints, for callers that put the message
// somewhere else (a reason field, another error's message) and keep or drop
// the hint on purpose. Hints of errors wrapped by fmt.Errorf stay in.
func Message(err error) string {
	if err == nil {
		return ""
	}
	h, ok := err.(*hinted)
	if !ok {
		return err.Error()
	}
	if h.cause == nil {
		return h.msg
	}
	return h.msg + ": " + Message(h.cause)
}
