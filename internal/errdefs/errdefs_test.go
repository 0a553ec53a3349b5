package errdefs

import (
	"errors"
	"fmt"
	"testing"
)

// The table must round-trip: every category has a name, status and exit
// code no other row shares, and each maps back to the same category.
func TestTableRoundTrips(t *testing.T) {
	names, statuses, exits := map[string]bool{}, map[int]bool{}, map[int]bool{}
	for _, c := range append(Categories(), nil) {
		err := error(nil)
		if c != nil {
			err = Wrap(c, errors.New("cause"), "do x", "op")
		} else {
			err = errors.New("plain")
		}
		n, s, x := CategoryName(err), HTTPStatus(err), ExitCode(err)
		if names[n] || statuses[s] || exits[x] {
			t.Fatalf("%v: name %q, status %d or exit %d used twice", c, n, s, x)
		}
		names[n], statuses[s], exits[x] = true, true, true
		if FromName(n) != c || FromHTTPStatus(s) != c || Category(err) != c {
			t.Fatalf("%v does not round-trip: name %q -> %v, status %d -> %v", c, n, FromName(n), s, FromHTTPStatus(s))
		}
	}
	if len(names) != 6 || FromName("bogus") != nil || FromHTTPStatus(418) != nil {
		t.Fatal("unknown names and statuses must map to no category")
	}
	if ExitCode(New(ErrInvalidArgument, "", "x")) != 2 || ExitCode(errors.New("x")) != 1 {
		t.Fatal("exit codes changed: they are part of the CLI contract")
	}
}

func TestHintAndMessageAreTyped(t *testing.T) {
	inner := New(ErrUnavailable, "install qemu", "qemu not found")
	outer := Wrap(ErrUnavailable, inner, "", "no guest can boot")
	if got := Message(outer); got != "no guest can boot: qemu not found" {
		t.Fatalf("message %q", got)
	}
	if got := Hint(outer); got != "install qemu" {
		t.Fatalf("hint %q", got)
	}
	if got := outer.Error(); got != "no guest can boot: qemu not found (hint: install qemu)" {
		t.Fatalf("error %q", got)
	}
	wrapped := fmt.Errorf("boot: %w", New(ErrNotFound, "pull it", "no env"))
	if Hint(wrapped) != "pull it" || !errors.Is(wrapped, ErrNotFound) {
		t.Fatal("hint lost through fmt.Errorf")
	}
	if Hint(errors.New("x")) != "" || Message(nil) != "" {
		t.Fatal("plain errors have no hint")
	}
}
