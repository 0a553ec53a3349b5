package names

import "testing"

func TestIdentifier(t *testing.T) {
	for _, ok := range []string{"web", "db-1", "v1.2_final", "A", "9lives"} {
		if !IsIdentifier(ok) {
			t.Errorf("%q rejected", ok)
		}
	}
	long := ""
	for i := 0; i < 65; i++ {
		long += "a"
	}
	for _, bad := range []string{"", "-x", ".hidden", "a/b", "../x", "a b", "é", long} {
		if IsIdentifier(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestEnvName(t *testing.T) {
	for _, ok := range []string{"TOKEN", "_x", "API_KEY_2"} {
		if !IsEnvName(ok) {
			t.Errorf("%q rejected", ok)
		}
	}
	for _, bad := range []string{"", "2X", "A-B", "A.B", "A=B"} {
		if IsEnvName(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}
