package patch

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aymanbagabas/go-udiff"

	"github.com/pyro-mcp/pyro/internal/errdefs"
)

func apply1(t *testing.T, diff, old string, exists bool) (string, error) {
	t.Helper()
	files, err := Parse(diff)
	if err != nil {
		return "", err
	}
	if len(files) != 1 {
		t.Fatalf("files: %+v", files)
	}
	b, err := files[0].Apply([]byte(old), exists)
	return string(b), err
}

const base = "one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\nten\n"

func TestApplyRoundTrip(t *testing.T) {
	cases := []struct{ old, new string }{
		{base, strings.Replace(base, "three\n", "THREE\n", 1)},
		{base, strings.Replace(base, "ten\n", "ten\neleven\n", 1)},
		{base, "zero\n" + base},
		{base, strings.Replace(strings.Replace(base, "two\n", "", 1), "nine\n", "nine\n9.5\n", 1)},
		{base, strings.TrimSuffix(base, "\n")}, // drop the final newline
		{"a\nb", "a\nb\nc\n"},                  // add one
		{base, ""},
		{"x\n", "x\n\ny\n"},
	}
	for i, c := range cases {
		diff := udiff.Unified("a/f.txt", "b/f.txt", c.old, c.new)
		got, err := apply1(t, diff, c.old, true)
		if err != nil || got != c.new {
			t.Errorf("case %d: %q %v\n%s", i, got, err, diff)
		}
	}
}

func TestApplyMatchesGit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	old := base
	new := strings.Replace(strings.Replace(base, "one\n", "uno\n", 1), "eight\n", "acht\nocho\n", 1)
	os.WriteFile(a, []byte(old), 0o644)
	os.WriteFile(b, []byte(new), 0o644)
	out, _ := exec.Command("git", "diff", "--no-index", "-U1", a, b).Output()
	// git names them a/<path> and b/<path>: point both at one name.
	diff := strings.ReplaceAll(strings.ReplaceAll(string(out), "a"+a, "a/f"), "b"+b, "b/f")
	got, err := apply1(t, diff, old, true)
	if err != nil || got != new {
		t.Fatalf("%q %v\n%s", got, err, diff)
	}
}

func TestApplyOffset(t *testing.T) {
	diff := "--- f\n+++ f\n@@ -3,2 +3,2 @@\n three\n-four\n+FOUR\n"
	got, err := apply1(t, diff, "new1\nnew2\n"+base, true)
	if err != nil || got != "new1\nnew2\n"+strings.Replace(base, "four", "FOUR", 1) {
		t.Fatalf("%q %v", got, err)
	}
}

func TestApplyCreateDelete(t *testing.T) {
	create := "diff --git a/n.txt b/n.txt\nnew file mode 100644\n--- /dev/null\n+++ b/n.txt\n@@ -0,0 +1,2 @@\n+hi\n+there\n"
	files, err := Parse(create)
	if err != nil || files[0].Path != "n.txt" || !files[0].Create {
		t.Fatalf("%+v %v", files, err)
	}
	if got, err := files[0].Apply(nil, false); err != nil || string(got) != "hi\nthere\n" {
		t.Fatalf("create: %q %v", got, err)
	}
	if _, err := files[0].Apply([]byte("x"), true); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("create over an existing file: %v", err)
	}
	del := "--- a/n.txt\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-hi\n-there\n"
	files, _ = Parse(del)
	if got, err := files[0].Apply([]byte("hi\nthere\n"), true); err != nil || got != nil || !files[0].Delete {
		t.Fatalf("delete: %q %v", got, err)
	}
	if _, err := files[0].Apply([]byte("hi\nthere\nmore\n"), true); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("delete leaving lines: %v", err)
	}
}

func TestApplyFailsNamingHunk(t *testing.T) {
	diff := "--- a/f.txt\n+++ b/f.txt\n@@ -1,2 +1,2 @@\n one\n-two\n+TWO\n@@ -6,2 +6,2 @@\n six\n-SEVEN\n+7\n"
	_, err := apply1(t, diff, base, true)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "hunk 2 of f.txt (@@ -6,2 +6,2 @@)") ||
		!strings.Contains(err.Error(), `line 7 is "seven"`) {
		t.Fatalf("%v", err)
	}
	if _, err := apply1(t, diff, base, false); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("missing file: %v", err)
	}
	// Hunks never go back over an earlier one.
	twice := "--- f\n+++ f\n@@ -1,1 +1,1 @@\n-one\n+1\n@@ -1,1 +1,1 @@\n-one\n+uno\n"
	if _, err := apply1(t, twice, base, true); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("overlapping hunks: %v", err)
	}
	// A context line must match exactly, whitespace included.
	ws := "--- f\n+++ f\n@@ -1,2 +1,2 @@\n one \n-two\n+2\n"
	if _, err := apply1(t, ws, base, true); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("fuzzy context accepted: %v", err)
	}
}

func TestParseRefuses(t *testing.T) {
	bad := map[string]string{
		"empty":         "",
		"prose":         "just some words\n",
		"short hunk":    "--- f\n+++ f\n@@ -1,3 +1,3 @@\n one\n-two\n",
		"long hunk":     "--- f\n+++ f\n@@ -1,1 +1,1 @@\n one\n-two\n+2\n",
		"bad header":    "--- f\n+++ f\n@@ -x +1 @@\n one\n",
		"bad line":      "--- f\n+++ f\n@@ -1,2 +1,2 @@\n one\n*two\n",
		"rename":        "diff --git a/x b/y\nsimilarity index 90%\nrename from x\nrename to y\n",
		"renamed names": "--- a/x\n+++ b/y\n@@ -1 +1 @@\n-a\n+b\n",
		"binary":        "diff --git a/x b/x\nGIT binary patch\nliteral 1\n",
		"twice":         "--- f\n+++ f\n@@ -1 +1 @@\n-a\n+b\n--- f\n+++ f\n@@ -3 +3 @@\n-c\n+d\n",
		"both null":     "--- /dev/null\n+++ /dev/null\n@@ -0,0 +1 @@\n+a\n",
		"orphan hunk":   "@@ -1 +1 @@\n-a\n+b\n",
		"no hunks":      "--- f\n+++ f\n",
		"huge":          strings.Repeat("x", MaxPatchBytes+1),
	}
	for name, diff := range bad {
		if _, err := Parse(diff); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestParseNames(t *testing.T) {
	files, err := Parse("commit message\n\n--- a/x y.txt\t2024-01-01 00:00:00\n+++ b/x y.txt\t2024-01-02\n@@ -1 +1 @@\n-a\n+b\n" +
		"--- \"a/t\\tab\"\n+++ \"b/t\\tab\"\n@@ -1 +1 @@\n-a\n+b\n--- plain\n+++ plain\n@@ -1 +1 @@\n-a\n+b\n")
	if err != nil || len(files) != 3 || files[0].Path != "x y.txt" || files[1].Path != "t\tab" || files[2].Path != "plain" {
		t.Fatalf("%+v %v", files, err)
	}
}

func FuzzParseApply(f *testing.F) {
	f.Add("--- f\n+++ f\n@@ -1,2 +1,2 @@\n one\n-two\n+TWO\n", base)
	f.Add("--- /dev/null\n+++ b/n\n@@ -0,0 +1 @@\n+x\n\\ No newline at end of file\n", "")
	f.Fuzz(func(t *testing.T, diff, old string) {
		files, err := Parse(diff)
		if err != nil {
			return
		}
		for _, fl := range files {
			_, _ = fl.Apply([]byte(old), !fl.Create)
		}
	})
}
