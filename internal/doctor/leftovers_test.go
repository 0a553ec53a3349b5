package doctor

import (
	"strings"
	"testing"
)

func TestLeftovers(t *testing.T) {
	for _, tc := range []struct {
		removed    int
		failed     []string
		incomplete bool
		status     string
		detail     string
	}{
		{0, nil, false, OK, "none from interrupted runs"},
		{1, nil, false, OK, "1 leftover from an interrupted run, removed"},
		{2, nil, false, OK, "2 leftovers from interrupted runs, removed"},
		{1, []string{"remove x: permission denied"}, false, Warn, "1 could not be removed: remove x: permission denied"},
		{3, nil, true, Warn, "more may remain"},
	} {
		c := Leftovers(tc.removed, tc.failed, tc.incomplete)
		if c.Name != "leftovers" || c.Status != tc.status || !strings.Contains(c.Detail, tc.detail) || (c.Status != OK) != (c.Hint != "") {
			t.Errorf("Leftovers(%d, %v, %v) = %+v", tc.removed, tc.failed, tc.incomplete, c)
		}
	}
}
