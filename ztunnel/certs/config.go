package certs

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ambient-mesh/ambient/api/identity"
)

// Clock is the time the Manager runs on: validity checks, renewal and retry timers. Tests drive a
// fake one; RealClock is the wall clock.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine after d, unless the Timer is stopped first.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc call.
type Timer interface {
	// Stop prevents the call if it has not started; it reports whether it did.
	Stop() bool
}

// RealClock returns the wall clock.
func RealClock() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time                            { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// Config configures a Manager.
type Config struct {
	// CA issues the certificates; DialCA makes the real one, which the caller closes after Run.
	CA CertificateClient
	// Roots returns the trust bundle every issued chain must verify against; nil until there is
	// one, and then every answer is refused (and retried).
	Roots func() *x509.CertPool
	// TrustDomain is the only trust domain identities may be acquired in.
	TrustDomain string
	// Validity is the lifetime asked for; the CA may shorten it, and renewal follows what it
	// issued.
	Validity time.Duration
	// RetryInitial and RetryMax bound the wait after a failed request: it doubles per failure up
	// to RetryMax, each wait jittered down by up to half so the ztunnels of a cluster do not
	// retry against a recovering CA in lockstep.
	RetryInitial, RetryMax time.Duration
	// RequestTimeout bounds one CA call, so a hung call does not hold up its identity forever.
	RequestTimeout time.Duration
	Clock          Clock
	Log            *slog.Logger
}

// Default returns the configuration ztunnel runs with; CA and Roots are the caller's.
func Default() Config {
	return Config{
		TrustDomain:    "cluster.local",
		Validity:       24 * time.Hour,
		RetryInitial:   time.Second,
		RetryMax:       time.Minute,
		RequestTimeout: 30 * time.Second,
		Clock:          RealClock(),
		Log:            slog.Default(),
	}
}

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []error
	if c.CA == nil {
		errs = append(errs, errors.New("missing CA"))
	}
	if c.Roots == nil {
		errs = append(errs, errors.New("missing Roots"))
	}
	// The trust domain is checked by the identity rules, on a placeholder path.
	if err := (identity.Identity{TrustDomain: c.TrustDomain, Namespace: "ns", ServiceAccount: "sa"}).Validate(); err != nil {
		errs = append(errs, fmt.Errorf("TrustDomain: %w", err))
	}
	if c.Validity < time.Minute {
		errs = append(errs, fmt.Errorf("validity %v: must be at least a minute", c.Validity))
	}
	if c.RetryInitial <= 0 {
		errs = append(errs, fmt.Errorf("RetryInitial %v: must be positive", c.RetryInitial))
	}
	if c.RetryMax < c.RetryInitial {
		errs = append(errs, fmt.Errorf("RetryMax %v: must be at least RetryInitial %v", c.RetryMax, c.RetryInitial))
	}
	if c.RequestTimeout <= 0 {
		errs = append(errs, fmt.Errorf("RequestTimeout %v: must be positive", c.RequestTimeout))
	}
	if c.Clock == nil {
		errs = append(errs, errors.New("missing Clock"))
	}
	if c.Log == nil {
		errs = append(errs, errors.New("missing Log"))
	}
	return errors.Join(errs...)
}
