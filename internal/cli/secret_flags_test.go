package cli

import (
	"errors"
	"strings"
	"testing"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

func TestSecretFlagForms(t *testing.T) {
	// NAME=VALUE stays the contract's literal form; stdin is not read.
	got, err := parseSecretFlags([]string{"A=x=y"}, []string{"K=/k.pem"}, nil)
	if err != nil || len(got) != 2 || got[0].Name != "A" || got[0].Value != "x=y" || got[1].FilePath != "/k.pem" {
		t.Fatalf("%+v %v", got, err)
	}
	// One bare NAME: stdin is the value, minus echo's newline.
	got, err = parseSecretFlags([]string{"TOKEN"}, nil, strings.NewReader("s3cret\n"))
	if err != nil || len(got) != 1 || got[0].Name != "TOKEN" || got[0].Value != "s3cret" {
		t.Fatalf("%+v %v", got, err)
	}
	// Several bare NAMEs: NUL-terminated values in flag order, exact
	// (newlines kept), mixed with literal ones.
	got, err = parseSecretFlags([]string{"A", "B=lit", "C"}, nil, strings.NewReader("one\n\x00two\x00"))
	if err != nil || len(got) != 3 || got[0].Value != "one\n" || got[1].Value != "lit" || got[2].Value != "two" {
		t.Fatalf("%+v %v", got, err)
	}
}

func TestSecretFlagErrors(t *testing.T) {
	for _, c := range []struct {
		literal []string
		stdin   string
		want    string
	}{
		{[]string{"=v"}, "", "no NAME"},
		{[]string{"A", "B"}, "just one", "no NUL separators"},
		{[]string{"A", "B"}, "1\x002\x003\x00", "3 NUL-terminated values for 2"},
		{[]string{"A"}, strings.Repeat("x", maxStdinSecrets+1), "more than"},
	} {
		_, err := parseSecretFlags(c.literal, nil, strings.NewReader(c.stdin))
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: want invalid argument %q, got %v", c.literal, c.want, err)
		}
	}
}
