// Package errdefs holds pyro's few error categories. Every error that leaves
// the SDK wraps exactly one of them so callers branch with errors.Is, never by
// matching text. A category maps to a CLI exit code and to an MCP tool error.
package errdefs

import (
	"errors"
	"fmt"
)

// The categories. Test with errors.Is(err, errdefs.ErrNotFound).
var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrUnavailable        = errors.New("unavailable")
)

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

// Category returns the category err belongs to, or nil when it has none.
func Category(err error) error {
	for _, c := range []error{ErrNotFound, ErrAlreadyExists, ErrFailedPrecondition, ErrInvalidArgument, ErrUnavailable} {
		if errors.Is(err, c) {
			return c
		}
	}
	return nil
}

// CategoryName is the stable snake_case name used in JSON output.
func CategoryName(err error) string {
	switch Category(err) {
	case ErrNotFound:
		return "not_found"
	case ErrAlreadyExists:
		return "already_exists"
	case ErrFailedPrecondition:
		return "failed_precondition"
	case ErrInvalidArgument:
		return "invalid_argument"
	case ErrUnavailable:
		return "unavailable"
	}
	return "internal"
}

// ExitCode maps a category to the CLI's exit code. pyro run passes the guest
// command's own exit code through, so these only apply to pyro's own failures.
func ExitCode(err error) int {
	switch Category(err) {
	case ErrInvalidArgument:
		return 2
	case ErrNotFound:
		return 3
	case ErrAlreadyExists:
		return 4
	case ErrFailedPrecondition:
		return 5
	case ErrUnavailable:
		return 6
	}
	return 1
}

// HTTPStatus maps a category to the HTTP status of an API error reply
// (the guest agent's and the supervisor's).
func HTTPStatus(err error) int {
	switch Category(err) {
	case ErrInvalidArgument:
		return 400
	case ErrNotFound:
		return 404
	case ErrAlreadyExists, ErrFailedPrecondition:
		return 409
	case ErrUnavailable:
		return 503
	}
	return 500
}
