package redact

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
)

const M = Marker

func TestString(t *testing.T) {
	r := New([]string{"hunter2", "s3cr3t-t0ken", "x"})
	for in, want := range map[string]string{
		"":                               "",
		"password is hunter2.":           "password is " + M + ".",
		"hunter2hunter2":                 M + M,
		"xyz":                            M + "yz",
		"s3cr3t-t0ken and hunter2":       M + " and " + M,
		"no secrets here":                "no secrets here",
		"hunter":                         "hunter",
		"Bearer s3cr3t-t0ken\nhunter2\n": "Bearer " + M + "\n" + M + "\n",
	} {
		if got := r.String(in); got != want {
			t.Errorf("String(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEncodedForms(t *testing.T) {
	secret := "p@ss w/rd+&?ü\"<x>"
	r := New([]string{secret})
	b := []byte(secret)
	forms := map[string]string{
		"base64 std":     base64.StdEncoding.EncodeToString(b),
		"base64 raw":     base64.RawStdEncoding.EncodeToString(b),
		"base64 url":     base64.URLEncoding.EncodeToString(b),
		"base64 url raw": base64.RawURLEncoding.EncodeToString(b),
		"hex":            hex.EncodeToString(b),
		"HEX":            strings.ToUpper(hex.EncodeToString(b)),
		"query":          url.QueryEscape(secret),
		"path":           url.PathEscape(secret),
		"json":           `p@ss w/rd+&?ü\"<x>`,
		"json html":      `p@ss w/rd+\u0026?ü\"\u003cx\u003e`,
	}
	for name, f := range forms {
		in := "before " + f + " after"
		if got := r.String(in); got != "before "+M+" after" {
			t.Errorf("%s: String(%q) = %q", name, in, got)
		}
	}
	// Embedded in a longer base64 string at every byte offset.
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding} {
		for pre := 0; pre < 6; pre++ {
			for post := 0; post < 4; post++ {
				data := append(append(bytes.Repeat([]byte{0xA5}, pre), b...), bytes.Repeat([]byte{0x5A}, post)...)
				in := enc.EncodeToString(data)
				got := r.String(in)
				if !strings.Contains(got, M) {
					t.Errorf("base64 at offset %d+%d: %q not redacted", pre, post, in)
				}
				// What is left is at most the characters mixing in other bytes.
				if rest := len(got) - len(M); rest > len(in)-(len(b)*8/6-2) {
					t.Errorf("base64 at offset %d: too little redacted: %q", pre, got)
				}
			}
		}
	}
}

func TestShortSecrets(t *testing.T) {
	// A short secret is redacted raw, but its short encodings are not.
	r := New([]string{"ab"})
	if got := r.String("xaby"); got != "x"+M+"y" {
		t.Fatalf("got %q", got)
	}
	for _, f := range []string{"YWI=", "YWI", "6162"} {
		if got := r.String(f); got != f {
			t.Errorf("short encoding %q redacted: %q", f, got)
		}
	}
	// Eight bytes and more of encoding are redacted.
	r = New([]string{"abcdef"})
	for _, f := range []string{"YWJjZGVm", "616263646566"} {
		if got := r.String(f); got != M {
			t.Errorf("%q: got %q", f, got)
		}
	}
}

func TestOverlapsAndPrefixes(t *testing.T) {
	r := New([]string{"abc", "abcdef", "cdx", "aa"})
	for in, want := range map[string]string{
		"abcdefg":   M + "g",   // longest at the leftmost position
		"abcdeX":    M + "deX", // the longer one does not match
		"abcdx":     M + "dx",  // leftmost wins over an overlapping later match
		"zcdx":      "z" + M,   // ...
		"aaa":       M + "a",   // self-overlap
		"aaaa":      M + M,     // ...
		"abcabc":    M + M,     // adjacent
		"ab":        "ab",      // proper prefix of a secret
		"abcdefabc": M + M,
	} {
		if got := r.String(in); got != want {
			t.Errorf("String(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMetacharacters(t *testing.T) {
	secret := `a.b*c(d)[e]$^\|?+{1}`
	r := New([]string{secret})
	if got := r.String("x" + secret + "y"); got != "x"+M+"y" {
		t.Fatalf("got %q", got)
	}
	if got := r.String("aXb*c(d)[e]$^\\|?+{1}"); strings.Contains(got, M) {
		t.Fatalf(". matched as a wildcard: %q", got)
	}
}

func TestEmpty(t *testing.T) {
	var nilR *Redactor
	for _, r := range []*Redactor{nilR, New(nil), New([]string{"", ""})} {
		if !r.Empty() {
			t.Fatal("not empty")
		}
		if r.String("abc") != "abc" || string(r.Bytes([]byte("abc"))) != "abc" {
			t.Fatal("changed text")
		}
		s := r.Stream()
		if string(s.Write([]byte("abc"))) != "abc" || s.Flush() != nil {
			t.Fatal("stream changed text")
		}
	}
	if New([]string{"a"}).Empty() {
		t.Fatal("empty with a secret")
	}
}

func TestError(t *testing.T) {
	base := errors.New("category")
	r := New([]string{"hunter2"})
	err := r.Error(fmt.Errorf("login with hunter2 failed: %w", base))
	if err.Error() != "login with "+M+" failed: category" || !errors.Is(err, base) {
		t.Fatalf("got %v", err)
	}
	plain := errors.New("nothing")
	if r.Error(plain) != plain || r.Error(nil) != nil {
		t.Fatal("changed an error with nothing to hide")
	}
}

// streamAll feeds chunks to a Stream and checks the hold-back bound.
func streamAll(t testing.TB, r *Redactor, chunks [][]byte) string {
	s := r.Stream()
	var out []byte
	for _, c := range chunks {
		out = append(out, s.Write(c)...)
		if r.MaxPatternLen() > 0 && s.Pending() > r.MaxPatternLen()-1 {
			t.Fatalf("holding %d bytes, max pattern %d", s.Pending(), r.MaxPatternLen())
		}
	}
	return string(append(out, s.Flush()...))
}

func TestStreamEverySplit(t *testing.T) {
	secrets := []string{"hunter2", "hunter2hunter3", "s3cr3t-t0ken", "aa", "x.y*"}
	r := New(secrets)
	in := "start hunter2hunter3 hunter2 aaa x.y* " +
		base64.StdEncoding.EncodeToString([]byte("zz s3cr3t-t0ken zz")) + " " +
		hex.EncodeToString([]byte("s3cr3t-t0ken")) + " hunte end s3cr3t-t0"
	want := r.String(in)
	for _, s := range []string{"hunter2", "s3cr3t-t0ken"} {
		if strings.Contains(want, s) {
			t.Fatalf("String leaks %q: %q", s, want)
		}
	}
	b := []byte(in)
	for i := 0; i <= len(b); i++ {
		if got := streamAll(t, r, [][]byte{b[:i], b[i:]}); got != want {
			t.Fatalf("split at %d: got %q, want %q", i, got, want)
		}
		for j := i; j <= len(b); j += 3 {
			if got := streamAll(t, r, [][]byte{b[:i], b[i:j], b[j:]}); got != want {
				t.Fatalf("split at %d,%d: got %q, want %q", i, j, got, want)
			}
		}
	}
	var bytewise [][]byte
	for i := range b {
		bytewise = append(bytewise, b[i:i+1])
	}
	if got := streamAll(t, r, bytewise); got != want {
		t.Fatalf("byte at a time: got %q, want %q", got, want)
	}
}

func TestStreamNeverEmitsSecretEarly(t *testing.T) {
	r := New([]string{"topsecret"})
	s := r.Stream()
	var out []byte
	for _, c := range []string{"abc top", "sec", "r", "et", " def"} {
		out = append(out, s.Write([]byte(c))...)
		if strings.Contains(string(out), "top") && !strings.Contains(string(out), M) {
			t.Fatalf("emitted a possible secret prefix: %q", out)
		}
	}
	out = append(out, s.Flush()...)
	if string(out) != "abc "+M+" def" {
		t.Fatalf("got %q", out)
	}
	// A prefix that never completes is emitted on Flush.
	s = r.Stream()
	out = s.Write([]byte("abc topsec"))
	if string(out) != "abc " {
		t.Fatalf("got %q", out)
	}
	if got := string(s.Flush()); got != "topsec" {
		t.Fatalf("flush %q", got)
	}
}

type chunkWriter struct{ bytes.Buffer }

func TestWriter(t *testing.T) {
	r := New([]string{"hunter2"})
	var dst chunkWriter
	w := r.Writer(&dst)
	src := strings.NewReader(strings.Repeat("pw=hunter2;", 1000))
	buf := make([]byte, 5)
	if _, err := io.CopyBuffer(w, struct{ io.Reader }{src}, buf); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if want := strings.Repeat("pw="+M+";", 1000); dst.String() != want {
		t.Fatalf("got %q", dst.String()[:100])
	}
}

// lower maps arbitrary bytes to a lowercase alphabet that shares nothing
// with Marker, so "the output contains no secret" is a fair check.
func lower(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	b := []byte(s)
	for i := range b {
		b[i] = 'a' + b[i]%8
	}
	return string(b)
}

func FuzzRedactStream(f *testing.F) {
	f.Add([]byte("hello hunter2 world"), "hunter2", "hunt", uint64(1))
	f.Add([]byte("aaaaaaaaaaaaa"), "aa", "aaa", uint64(7))
	f.Add([]byte("abcabcabd"), "abcabd", "cab", uint64(3))
	f.Add([]byte{}, "", "x", uint64(0))
	f.Fuzz(func(t *testing.T, input []byte, s1, s2 string, seed uint64) {
		s1, s2 = lower(s1, 24), lower(s2, 24)
		rng := rand.New(rand.NewPCG(seed, seed>>7))
		r := New([]string{s1, s2})
		// Plant secrets and encodings in the input.
		var in []byte
		forms := []string{s1, s2}
		for _, s := range []string{s1, s2} {
			forms = append(forms, base64.StdEncoding.EncodeToString([]byte("q"+s)), hex.EncodeToString([]byte(s)))
		}
		for _, c := range input {
			in = append(in, c)
			if rng.IntN(8) == 0 {
				in = append(in, forms[rng.IntN(len(forms))]...)
			}
		}
		want := r.String(string(in))
		for _, s := range []string{s1, s2} {
			if s != "" && strings.Contains(want, s) {
				t.Fatalf("String(%q) = %q contains %q", in, want, s)
			}
			if e := hex.EncodeToString([]byte(s)); len(e) >= MinEncodedLen && strings.Contains(want, e) {
				t.Fatalf("String(%q) = %q contains hex %q", in, want, e)
			}
		}
		var chunks [][]byte
		for rest := in; len(rest) > 0; {
			n := 1 + rng.IntN(len(rest))
			if rng.IntN(2) == 0 {
				n = 1 + rng.IntN(min(len(rest), 4))
			}
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		if got := streamAll(t, r, chunks); got != want {
			t.Fatalf("stream %q of %q = %q, want %q", chunks, in, got, want)
		}
	})
}

func BenchmarkStream(b *testing.B) {
	r := New([]string{"hunter2", "s3cr3t-t0ken-0123456789", "another-secret-value"})
	data := bytes.Repeat([]byte("some ordinary log output line with numbers 0123456789 and hunter2\n"), 1000)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		s := r.Stream()
		for i := 0; i < len(data); i += 4096 {
			s.Write(data[i:min(i+4096, len(data))])
		}
		s.Flush()
	}
}
