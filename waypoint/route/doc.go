// Package route owns the L7 routing decisions of a waypoint proxy, following the Gateway API v1
// HTTPRoute semantics: which rule of a Service's routes (ambient.route.v1.ServiceRoutes) applies
// to a request, and what that rule's filters do to it (header modification, redirect, rewrite,
// weighted backend choice, retry eligibility).
//
// It must not do I/O: it opens no connection, sends no request, reads no clock, and does not log.
// Randomness for backend choice is supplied by the caller, so every decision is reproducible in
// tests. It must not re-order rules either: istiod-lite sends them in precedence order already.
//
// Compile turns a ServiceRoutes into an immutable Table once per configuration push; Select then
// runs per request without allocating beyond the lazy parse of a query string.
package route
