package workspace

import "strings"

// subtrees is a set of paths asked one question: does a path lie strictly
// below one of them? Paths come from the guest (a quiet listing's delta),
// so the answer takes time linear in the path's length: checking every
// prefix against a map hashes each prefix anew, quadratic in a path of
// many slashes (a 250 KiB path of them costs the host minutes).
type subtrees struct{ root subtreeNode }

type subtreeNode struct {
	member bool
	kids   map[string]*subtreeNode
}

// add puts p in the set.
func (s *subtrees) add(p string) {
	n := &s.root
	for {
		name, rest, more := strings.Cut(p, "/")
		k := n.kids[name]
		if k == nil {
			if n.kids == nil {
				n.kids = make(map[string]*subtreeNode)
			}
			k = &subtreeNode{}
			n.kids[name] = k
		}
		n = k
		if !more {
			n.member = true
			return
		}
		p = rest
	}
}

// below reports whether a proper, non-empty prefix of p that ends just
// before a slash is in the set.
func (s *subtrees) below(p string) bool {
	n := &s.root
	for i := 0; ; {
		j := strings.IndexByte(p[i:], '/')
		if j < 0 {
			return false
		}
		if n = n.kids[p[i:i+j]]; n == nil {
			return false
		}
		i += j
		if n.member && i > 0 {
			return true
		}
		i++
	}
}
