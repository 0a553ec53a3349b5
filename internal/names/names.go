// Package names validates the user-chosen names that become path parts,
// process environment keys or API identifiers: service and snapshot names,
// secret names. Plain loops instead of regular expressions keep process
// start-up cheap, which matters in a TCG guest where the agent starts on
// every boot.
package names

// IsIdentifier reports a safe name: a letter or digit, then up to 63
// letters, digits, '.', '_' or '-' ("web", "db-1", "v1.2_final").
func IsIdentifier(s string) bool {
	if len(s) == 0 || len(s) > 64 || !alnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// IsEnvName reports an environment-variable-safe name: a letter or '_',
// then up to 127 letters, digits or '_'.
func IsEnvName(s string) bool {
	if len(s) == 0 || len(s) > 128 || (!letter(s[0]) && s[0] != '_') {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '_' {
			return false
		}
	}
	return true
}

func letter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func alnum(c byte) bool  { return letter(c) || c >= '0' && c <= '9' }
