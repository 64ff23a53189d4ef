// Package identity owns the workload identity format of the mesh: the SPIFFE ID
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> (DESIGN.md §3). It parses, formats and
// validates identities and nothing else: it does not read certificates, talk to a CA or decide
// authorization. It depends on the standard library only, so every component can import it.
package identity

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Scheme is the URI scheme of every identity.
const Scheme = "spiffe"

// maxLen bounds a SPIFFE ID, as the SPIFFE specification does (2048 bytes).
const maxLen = 2048

// ErrInvalid is wrapped by every parse and validation error.
var ErrInvalid = errors.New("invalid identity")

// Identity is a workload identity. The zero value is not valid; build one with Parse or fill the
// fields and call Validate.
type Identity struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// Parse parses spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>. It is strict: no
// query, fragment, user info, port, percent-encoding, empty or dot segments, and the trust domain is
// lower case, as the SPIFFE specification requires.
func Parse(s string) (Identity, error) {
	if len(s) > maxLen {
		return Identity{}, fmt.Errorf("%w: longer than %d bytes", ErrInvalid, maxLen)
	}
	rest, ok := strings.CutPrefix(s, Scheme+"://")
	if !ok {
		return Identity{}, fmt.Errorf("%w: %q does not start with %s://", ErrInvalid, s, Scheme)
	}
	td, path, ok := strings.Cut(rest, "/")
	if !ok {
		return Identity{}, fmt.Errorf("%w: %q has no path", ErrInvalid, s)
	}
	parts := strings.Split(path, "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return Identity{}, fmt.Errorf("%w: path of %q is not ns/<namespace>/sa/<service-account>", ErrInvalid, s)
	}
	id := Identity{TrustDomain: td, Namespace: parts[1], ServiceAccount: parts[3]}
	if err := id.Validate(); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// FromURL converts a certificate URI SAN into an Identity, applying the same rules as Parse.
func FromURL(u *url.URL) (Identity, error) {
	if u == nil {
		return Identity{}, fmt.Errorf("%w: nil URI", ErrInvalid)
	}
	return Parse(u.String())
}

// String formats the identity as a SPIFFE ID. It does not validate.
func (id Identity) String() string {
	return Scheme + "://" + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// URL returns the identity as a URI, for a certificate's URI SAN.
func (id Identity) URL() *url.URL {
	return &url.URL{Scheme: Scheme, Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount}
}

// IsZero reports whether id is the zero Identity.
func (id Identity) IsZero() bool { return id == Identity{} }

// Validate reports every problem with id, joined.
func (id Identity) Validate() error {
	var errs []error
	if err := validTrustDomain(id.TrustDomain); err != nil {
		errs = append(errs, err)
	}
	if err := validSegment("namespace", id.Namespace); err != nil {
		errs = append(errs, err)
	}
	if err := validSegment("service account", id.ServiceAccount); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 && len(id.String()) > maxLen {
		errs = append(errs, fmt.Errorf("%w: longer than %d bytes", ErrInvalid, maxLen))
	}
	return errors.Join(errs...)
}

// validTrustDomain applies the SPIFFE trust domain rules: lower-case letters, digits, '.', '-', '_'.
func validTrustDomain(td string) error {
	if td == "" {
		return fmt.Errorf("%w: empty trust domain", ErrInvalid)
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("%w: trust domain %q has character %q", ErrInvalid, td, c)
		}
	}
	return nil
}

// validSegment applies the SPIFFE path segment rules: letters, digits, '.', '-', '_', and not '.' or '..'.
func validSegment(what, s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty %s", ErrInvalid, what)
	}
	if s == "." || s == ".." {
		return fmt.Errorf("%w: %s %q is a dot segment", ErrInvalid, what, s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("%w: %s %q has character %q", ErrInvalid, what, s, c)
		}
	}
	return nil
}
