package agentapi

// Inherited is what a guest restored from a live-saved one (a fork) still
// runs: the services, shells and background jobs of the guest it was saved
// from, each as its list endpoint would report it. The identity call
// returns it when asked (IdentityRequest.Inherited), so a fork's host
// learns it without one more call per list: under TCG every distinct guest
// code path a restored guest runs is translated again, and each call is
// more of them.
type Inherited struct {
	Services []ServiceStatus `json:"services"`
	Shells   []ShellInfo     `json:"shells"`
	Jobs     []JobInfo       `json:"jobs"`
}
