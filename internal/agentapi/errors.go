package agentapi

import (
	"encoding/json"
	"net/http"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

// ErrorResponse is the body of a non-2xx reply (and of an exec error
// event). Category is an errdefs wire name; Hint, when set, is the action a
// person can take, kept apart from the message so it survives the trip
// intact.
type ErrorResponse struct {
	Error    string `json:"error"`
	Category string `json:"category"`
	Hint     string `json:"hint,omitempty"`
}

// NewErrorResponse describes err for the wire.
func NewErrorResponse(err error) ErrorResponse {
	return ErrorResponse{Error: errdefs.Message(err), Category: errdefs.CategoryName(err), Hint: errdefs.Hint(err)}
}

// WriteError answers a request with err: the status of its category and an
// ErrorResponse body. The agent and the supervisor both answer this way,
// so the host's client maps any reply back to the same category.
func WriteError(w http.ResponseWriter, err error) {
	WriteErrorResponse(w, errdefs.HTTPStatus(err), NewErrorResponse(err))
}

// WriteErrorResponse writes an already built body (the agent redacts
// secrets out of it first) with the status of its category.
func WriteErrorResponse(w http.ResponseWriter, status int, er ErrorResponse) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(er)
}

// Err turns a reply's body back into an errdefs error. The category comes
// from the body's name, else from the HTTP status (0: none); what maps to
// nothing is unavailable: the guest failed, not the caller.
func (er ErrorResponse) Err(status int) error {
	cat := errdefs.FromName(er.Category)
	if cat == nil && er.Category == "" {
		cat = errdefs.FromHTTPStatus(status)
	}
	if cat == nil {
		cat = errdefs.ErrUnavailable
	}
	return errdefs.New(cat, er.Hint, "%s", er.Error)
}
