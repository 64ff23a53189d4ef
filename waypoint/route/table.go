// table.go keeps the rules of compiling a ServiceRoutes into a Table and of selecting a rule:
// rules are tried in the order given (istiod-lite's precedence order, never re-sorted), a rule's
// ports and consumer namespace are checked before its match, and a client whose namespace has
// consumer rules sees only those. Compile rejects what the proxy could not apply faithfully.

package route

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"

	routev1 "github.com/ambient-mesh/ambient/api/route/v1"
)

// Table is a compiled ServiceRoutes: regular expressions compiled once. Safe for concurrent use,
// immutable.
type Table struct {
	rules     []*Rule
	protocols map[uint16]string
	// consumers holds every non-empty Rule.ConsumerNamespace of the table.
	consumers map[string]bool
}

// Rule is one compiled rule. Proto is the rule as received; callers read its filters, backends,
// timeouts and retry policy from it and must not modify it.
type Rule struct {
	Proto *routev1.Rule

	match matcher
}

// Compile checks and compiles sr. It returns an error naming the route (Rule.route) and the
// problem for an invalid regular expression, a redirect status other than 0/301/302/303/307/308,
// a prefix path modifier on a rule whose match is not a PREFIX path, or a header/query name that
// is empty (in a match or in a header modifier). Every problem found is reported, joined.
//
// A nil sr compiles to an empty table, which selects no rule.
func Compile(sr *routev1.ServiceRoutes) (*Table, error) {
	t := &Table{
		protocols: make(map[uint16]string, len(sr.GetProtocols())),
		consumers: make(map[string]bool),
	}
	for port, proto := range sr.GetProtocols() {
		// A port that cannot exist is ignored rather than failing the whole Service.
		if port > 0 && port <= 0xffff {
			t.protocols[uint16(port)] = proto
		}
	}
	var errs []error
	for i, pr := range sr.GetRules() {
		if pr == nil {
			errs = append(errs, fmt.Errorf("rule %d: nil rule", i))
			continue
		}
		m, merr := compileMatch(pr.GetMatch())
		if err := errors.Join(merr, checkRule(pr)); err != nil {
			errs = append(errs, ruleError(i, pr, err))
			continue
		}
		t.rules = append(t.rules, &Rule{Proto: pr, match: m})
		if ns := pr.GetConsumerNamespace(); ns != "" {
			t.consumers[ns] = true
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("service routes %s/%s: %w", sr.GetNamespace(), sr.GetHostname(), err)
	}
	return t, nil
}

func ruleError(i int, pr *routev1.Rule, err error) error {
	if pr.GetName() != "" {
		return fmt.Errorf("route %s rule %q (#%d): %w", pr.GetRoute(), pr.GetName(), i, err)
	}
	return fmt.Errorf("route %s rule #%d: %w", pr.GetRoute(), i, err)
}

// checkRule validates the filters of a rule and of its backends.
func checkRule(pr *routev1.Rule) error {
	// A nil PathMatch is PREFIX "/", so a prefix modifier is fine there.
	prefix := pr.GetMatch().GetPath().GetKind() == routev1.PathMatch_PREFIX
	var errs []error
	check := func(where string, fs []*routev1.Filter) {
		for j, f := range fs {
			if err := checkFilter(f, prefix); err != nil {
				errs = append(errs, fmt.Errorf("%sfilter %d: %w", where, j, err))
			}
		}
	}
	check("", pr.GetFilters())
	for j, b := range pr.GetBackends() {
		check(fmt.Sprintf("backend %d ", j), b.GetFilters())
	}
	return errors.Join(errs...)
}

func checkFilter(f *routev1.Filter, prefixMatch bool) error {
	switch k := f.GetKind().(type) {
	case *routev1.Filter_RequestHeaders:
		return checkHeaderModifier(k.RequestHeaders)
	case *routev1.Filter_ResponseHeaders:
		return checkHeaderModifier(k.ResponseHeaders)
	case *routev1.Filter_Redirect:
		switch c := k.Redirect.GetStatusCode(); c {
		case 0, 301, 302, 303, 307, 308:
		default:
			return fmt.Errorf("redirect status code %d, want 301, 302, 303, 307 or 308", c)
		}
		return checkPathModifier(k.Redirect.GetPath(), prefixMatch)
	case *routev1.Filter_Rewrite:
		return checkPathModifier(k.Rewrite.GetPath(), prefixMatch)
	case *routev1.Filter_Cors:
		_, err := CompileCORS(k.Cors)
		return err
	case *routev1.Filter_Mirror:
		for j, mf := range k.Mirror.GetBackend().GetFilters() {
			if err := checkFilter(mf, prefixMatch); err != nil {
				return fmt.Errorf("mirror filter %d: %w", j, err)
			}
		}
	}
	return nil
}

func checkPathModifier(pm *routev1.PathModifier, prefixMatch bool) error {
	if _, ok := pm.GetKind().(*routev1.PathModifier_Prefix); ok && !prefixMatch {
		return errors.New("prefix path modifier on a rule whose path match is not PREFIX")
	}
	return nil
}

func checkHeaderModifier(hm *routev1.HeaderModifier) error {
	for _, h := range slices.Concat(hm.GetSet(), hm.GetAdd()) {
		if h.GetName() == "" {
			return errors.New("header modifier: empty header name")
		}
	}
	if slices.Contains(hm.GetRemove(), "") {
		return errors.New("header modifier: empty header name to remove")
	}
	return nil
}

// Select returns the first rule (in the table's order, which is already precedence order) that
// applies to r, arriving on service port `port`, from a client in namespace srcNS; nil when none
// does. Consumer rules: when any rule in the table has ConsumerNamespace == srcNS (non-empty),
// only rules with that ConsumerNamespace are considered, whatever their ports; otherwise only
// rules with empty ConsumerNamespace. Rule.Ports empty = any port. t may be nil.
func (t *Table) Select(r *http.Request, port uint16, srcNS string) *Rule {
	rule, _ := t.SelectOrRouted(r, port, srcNS)
	return rule
}

// SelectOrRouted is Select that also reports whether any rule applies to the port and the
// client's namespace at all: a request that no rule of a routed Service matches is answered 404
// (Gateway API), while a Service without routes serves every request itself.
func (t *Table) SelectOrRouted(r *http.Request, port uint16, srcNS string) (*Rule, bool) {
	if t == nil {
		return nil, false
	}
	ns := ""
	if srcNS != "" && t.consumers[srcNS] {
		ns = srcNS
	}
	routed := false
	var q url.Values // parsed on the first rule that matches on query parameters
	for _, rule := range t.rules {
		if rule.Proto.GetConsumerNamespace() != ns || !onPort(rule.Proto.GetPorts(), port) {
			continue
		}
		routed = true
		if rule.match.matches(r, &q) {
			return rule, true
		}
	}
	return nil, routed
}

func onPort(ports []uint32, port uint16) bool {
	return len(ports) == 0 || slices.Contains(ports, uint32(port))
}

// Protocol returns the configured protocol for a port ("http", "http2", "tcp") or "" (sniff).
// t may be nil.
func (t *Table) Protocol(port uint16) string {
	if t == nil {
		return ""
	}
	return t.protocols[port]
}
