package xdsclient

import (
	"maps"
	"slices"
)

// named is a value with the resource name it is held under.
type named[V any] struct {
	name string
	v    V
}

// index maps a key (an address) to the value that claims it. Keys are unique in a healthy mesh,
// but the input is not trusted (and a pod IP can be reused while the old pod is still listed),
// so every claimant is kept: first holds the one with the smallest name, which lookups return,
// and more the others, sorted by name, so that removing the first promotes the next. more is
// almost always empty.
//
// An index is immutable once published: update returns a new one sharing what did not change.
type index[K comparable, V any] struct {
	first map[K]V
	more  map[K][]V
	// keys appends v's keys to buf, each once; name returns v's resource name.
	keys func(v V, buf []K) []K
	name func(v V) string
}

func newIndex[K comparable, V any](keys func(V, []K) []K, name func(V) string) index[K, V] {
	return index[K, V]{first: map[K]V{}, more: map[K][]V{}, keys: keys, name: name}
}

// update returns the index with the values olds (the previous versions of what changed or was
// removed) taken out and the values news put in.
func (ix index[K, V]) update(olds, news []named[V]) index[K, V] {
	if len(olds) == 0 && len(news) == 0 {
		return ix
	}
	out := ix
	if len(ix.first) == 0 {
		out.first = make(map[K]V, len(news)) // a first push: sized once
	} else {
		out.first = maps.Clone(ix.first)
	}
	clonedMore := false
	more := func() map[K][]V {
		if !clonedMore {
			out.more = maps.Clone(ix.more)
			if out.more == nil {
				out.more = map[K][]V{}
			}
			clonedMore = true
		}
		return out.more
	}
	var buf []K
	for _, o := range olds {
		buf = ix.keys(o.v, buf[:0])
		for _, k := range buf {
			rest := out.more[k]
			if f, ok := out.first[k]; ok && ix.name(f) == o.name {
				if len(rest) == 0 {
					delete(out.first, k)
					continue
				}
				out.first[k] = rest[0]
				if len(rest) == 1 {
					delete(more(), k)
				} else {
					// The tail shares rest's array, which is never written to (see insert).
					more()[k] = rest[1:]
				}
				continue
			}
			if i := slices.IndexFunc(rest, func(v V) bool { return ix.name(v) == o.name }); i >= 0 {
				if len(rest) == 1 {
					delete(more(), k)
				} else {
					more()[k] = slices.Concat(rest[:i], rest[i+1:])
				}
			}
		}
	}
	for _, n := range news {
		buf = ix.keys(n.v, buf[:0])
		for _, k := range buf {
			f, ok := out.first[k]
			if !ok {
				out.first[k] = n.v
				continue
			}
			if n.name < ix.name(f) {
				out.first[k] = n.v
				more()[k] = ix.insert(out.more[k], f)
			} else {
				more()[k] = ix.insert(out.more[k], n.v)
			}
		}
	}
	return out
}

// insert returns a new slice with v added to the sorted rest; rest itself is shared with
// published states and is never written to.
func (ix index[K, V]) insert(rest []V, v V) []V {
	name := ix.name(v)
	i, _ := slices.BinarySearchFunc(rest, name, func(e V, n string) int {
		switch en := ix.name(e); {
		case en < n:
			return -1
		case en > n:
			return 1
		}
		return 0
	})
	out := make([]V, 0, len(rest)+1)
	out = append(out, rest[:i]...)
	out = append(out, v)
	return append(out, rest[i:]...)
}
