package xdsclient

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
)

// Type URLs of the resources istiod-lite serves (istiod-lite/xds/README.md).
const (
	TypeWorkload      = "type.googleapis.com/ambient.workload.v1.Workload"
	TypeService       = "type.googleapis.com/ambient.workload.v1.Service"
	TypeAuthorization = "type.googleapis.com/ambient.workload.v1.Authorization"
	TypeTrustBundle   = "type.googleapis.com/ambient.ca.v1.TrustBundle"
	// TypeServiceRoutes is served to waypoints only.
	TypeServiceRoutes = "type.googleapis.com/ambient.route.v1.ServiceRoutes"
)

// TrustBundleName is the name of the single TrustBundle resource.
const TrustBundleName = "trust-bundle"

// knownTypes are the types this client can decode, in the order it subscribes to them: the trust
// bundle and services before the workloads that refer to them, as the server pushes them.
var knownTypes = []string{TypeTrustBundle, TypeService, TypeWorkload, TypeAuthorization}

// WaypointTypes are the types a waypoint subscribes to.
var WaypointTypes = []string{TypeTrustBundle, TypeService, TypeWorkload, TypeServiceRoutes}

// DefaultServerName is the name istiod-lite's serving certificate carries.
const DefaultServerName = "istiod-lite.istio-system.svc"

// Validator lets the caller refuse a resource the store itself could hold but the caller cannot
// use (an authorization the compiler rejects, say). A non-nil error NACKs the resource with the
// error as reason and keeps the previous version of it. It is called from Run's goroutine, once
// per received resource, and must not block.
type Validator func(typeURL, name string, m proto.Message) error

// Backoff bounds the wait between connection attempts: it starts at Initial, doubles per failed
// attempt up to Max, and each wait is jittered down by up to half so that the ztunnels of a
// cluster do not reconnect to a restarted istiod-lite in lockstep.
type Backoff struct {
	Initial, Max time.Duration
}

// Config configures a Client.
type Config struct {
	// Addr is istiod-lite's xDS address, host:port (port 15012).
	Addr string
	// TLS verifies istiod-lite: RootCAs the cluster CA, ServerName DefaultServerName. Required:
	// the bearer token is never sent in the clear.
	TLS *tls.Config
	// TokenFile holds the projected service-account token sent as "authorization: Bearer". It is
	// read again on every (re)connect, since projected tokens rotate.
	TokenFile string
	// Node is the node.id sent on the first request of a stream, for the server's logs.
	Node string
	// Types are the type URLs subscribed to (wildcard), each one of the Type* constants.
	Types []string
	// Backoff spaces reconnection attempts.
	Backoff Backoff
	// MaxRecvMsgSize bounds one response. A first push at 10,000 pods is about 3.5 MB, over
	// gRPC's 4 MB default soon after, so the default is 64 MiB.
	MaxRecvMsgSize int
	// Validator, if set, may refuse resources (see Validator).
	Validator Validator
	Log       *slog.Logger
}

// Default returns the configuration ztunnel runs with; Addr, TLS, TokenFile and Node are the
// caller's.
func Default() Config {
	return Config{
		Types:          slices.Clone(knownTypes),
		Backoff:        Backoff{Initial: 500 * time.Millisecond, Max: 30 * time.Second},
		MaxRecvMsgSize: 64 << 20,
		Log:            slog.Default(),
	}
}

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []error
	if c.Addr == "" {
		errs = append(errs, errors.New("missing Addr"))
	}
	if c.TLS == nil {
		errs = append(errs, errors.New("missing TLS: the token is never sent in the clear"))
	} else if c.TLS.InsecureSkipVerify {
		errs = append(errs, errors.New("TLS.InsecureSkipVerify: would send the token to anyone"))
	}
	if c.TokenFile == "" {
		errs = append(errs, errors.New("missing TokenFile"))
	}
	if c.Node == "" {
		errs = append(errs, errors.New("missing Node"))
	}
	if len(c.Types) == 0 {
		errs = append(errs, errors.New("no Types"))
	}
	seen := map[string]bool{}
	for _, t := range c.Types {
		if !slices.Contains(knownTypes, t) && t != TypeServiceRoutes {
			errs = append(errs, fmt.Errorf("unknown type %q in Types", t))
		} else if seen[t] {
			errs = append(errs, fmt.Errorf("type %q listed twice in Types", t))
		}
		seen[t] = true
	}
	if c.Backoff.Initial <= 0 {
		errs = append(errs, fmt.Errorf("Backoff.Initial %v: must be positive", c.Backoff.Initial))
	}
	if c.Backoff.Max < c.Backoff.Initial {
		errs = append(errs, fmt.Errorf("Backoff.Max %v: must be at least Initial %v", c.Backoff.Max, c.Backoff.Initial))
	}
	if c.MaxRecvMsgSize < 4<<20 {
		errs = append(errs, fmt.Errorf("MaxRecvMsgSize %d: must be at least 4 MiB", c.MaxRecvMsgSize))
	}
	if c.Log == nil {
		errs = append(errs, errors.New("missing Log"))
	}
	return errors.Join(errs...)
}
