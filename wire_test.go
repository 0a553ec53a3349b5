package pyro

import (
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/agentapi"
	"github.com/pyro-mcp/pyro/internal/doctor"
	"github.com/pyro-mcp/pyro/internal/envstore"
	"github.com/pyro-mcp/pyro/internal/tarutil"
	"github.com/pyro-mcp/pyro/internal/workspace"
)

// jsonNames lists the JSON field names of a struct type (inline embeds
// flattened).
func jsonNames(t reflect.Type) map[string]bool {
	out := map[string]bool{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if f.Anonymous && tag == "" {
			for n := range jsonNames(f.Type) {
				out[n] = true
			}
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = true
	}
	return out
}

// Every field of a wire type reaches its public type (wire.go): a field
// added to the wire and forgotten at the boundary fails here, instead of
// silently vanishing from the SDK and the CLI's --json.
func TestPublicTypesCoverWire(t *testing.T) {
	pairs := []struct {
		wire, public any
		left         []string // wire fields deliberately not public
	}{
		{workspace.Seed{}, WorkspaceSeed{}, nil},
		{workspace.Snapshot{}, Snapshot{}, nil},
		{workspace.HistoryEntry{}, HistoryEntry{}, nil},
		{workspace.DiffResult{}, WorkspaceDiff{}, nil},
		{workspace.Change{}, DiffChange{}, nil},
		{agentapi.ServiceReadiness{}, Readiness{}, nil},
		{agentapi.ServiceStatus{}, Service{}, nil},
		{agentapi.ServiceLogs{}, ServiceLogs{}, nil},
		{agentapi.ShellInfo{}, Shell{}, nil},
		{agentapi.ShellReadResponse{}, ShellRead{}, nil},
		{agentapi.ByteRange{}, ByteRange{}, nil},
		{agentapi.ShellWriteResponse{}, ShellWrite{}, nil},
		{agentapi.ShellSignalResponse{}, ShellSignal{}, nil},
		{doctor.Report{}, DoctorReport{}, nil},
		{doctor.Check{}, DoctorCheck{}, nil},
		{envstore.Manifest{}, EnvironmentManifest{}, nil},
		{envstore.KernelInfo{}, EnvironmentKernel{}, nil},
		{envstore.ImageInfo{}, EnvironmentImage{}, nil},
		{envstore.FileInfo{}, EnvironmentFile{}, nil},
		{envstore.Event{}, PullProgress{}, nil},
		{envstore.PruneResult{}, PruneResult{}, nil},
		{envstore.PrunedItem{}, PrunedItem{}, nil},
		{tarutil.Skip{}, ExportSkip{}, nil},
		// The guest's pid and clock are the guest's business; its step
		// timings go to the host's debug log only (run.go).
		{agentapi.ExecResult{}, ExecResult{}, []string{"pid", "started_at", "finished_at", "timings"}},
	}
	for _, p := range pairs {
		w, pub := reflect.TypeOf(p.wire), jsonNames(reflect.TypeOf(p.public))
		var missing []string
		for n := range jsonNames(w) {
			if !pub[n] && !contains(p.left, n) {
				missing = append(missing, n)
			}
		}
		sort.Strings(missing)
		if len(missing) > 0 {
			t.Errorf("%s: fields %v of the wire type are missing from %T (convert them in wire.go)", w, missing, p.public)
		}
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// The public API names no internal type: no exported field, parameter or
// result of the root package has a type from internal/.
func TestNoInternalTypesInPublicAPI(t *testing.T) {
	for _, v := range []any{VM{}, Workspace{}, RunResult{}, RunOptions{}, ExecOptions{}, ExecResult{}, Service{}, ServiceLogs{},
		Shell{}, ShellRead{}, ShellWrite{}, ShellSignal{}, WorkspaceDiff{}, Snapshot{}, HistoryEntry{}, WorkspaceSeed{},
		DoctorReport{}, StartServiceOptions{}, ReconcileReport{}, WriteShellOptions{}, Environment{}, PullResult{}, PruneResult{}, ExportResult{}} {
		checkNoInternal(t, reflect.TypeOf(v), map[reflect.Type]bool{})
	}
	ct := reflect.TypeOf(&Client{})
	for i := 0; i < ct.NumMethod(); i++ {
		m := ct.Method(i).Type
		for j := 0; j < m.NumIn(); j++ {
			checkNoInternal(t, m.In(j), map[reflect.Type]bool{})
		}
		for j := 0; j < m.NumOut(); j++ {
			checkNoInternal(t, m.Out(j), map[reflect.Type]bool{})
		}
	}
}

func checkNoInternal(t *testing.T, ty reflect.Type, seen map[reflect.Type]bool) {
	t.Helper()
	if seen[ty] {
		return
	}
	seen[ty] = true
	if strings.Contains(ty.PkgPath(), "/internal/") {
		t.Errorf("public API uses internal type %s", ty)
		return
	}
	switch ty.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array, reflect.Chan:
		checkNoInternal(t, ty.Elem(), seen)
	case reflect.Map:
		checkNoInternal(t, ty.Key(), seen)
		checkNoInternal(t, ty.Elem(), seen)
	case reflect.Struct:
		for i := 0; i < ty.NumField(); i++ {
			if f := ty.Field(i); f.IsExported() {
				checkNoInternal(t, f.Type, seen)
			}
		}
	case reflect.Func:
		for i := 0; i < ty.NumIn(); i++ {
			checkNoInternal(t, ty.In(i), seen)
		}
		for i := 0; i < ty.NumOut(); i++ {
			checkNoInternal(t, ty.Out(i), seen)
		}
	}
}
