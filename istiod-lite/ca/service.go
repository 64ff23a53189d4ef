package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/api/identity"
	"github.com/ambient-mesh/ambient/istiod-lite/authn"
	"github.com/ambient-mesh/ambient/istiod-lite/limit"
)

// PodsOnNode lists the pods scheduled on a node (from an informer cache).
type PodsOnNode func(node string) ([]*corev1.Pod, error)

// Config configures the CA service.
type Config struct {
	TrustDomain string
	DefaultTTL  time.Duration
	MaxTTL      time.Duration
	// ZtunnelServiceAccounts ("<ns>/<name>") may ask for the identities of pods on their node.
	ZtunnelServiceAccounts []string
	// IssueBurst certificates may be issued to one caller (a proxy pod) at once, and IssueRate
	// per second after that. A ztunnel asks for one certificate per service account on its node
	// when it starts, and renews each at half-life.
	IssueRate  float64
	IssueBurst int
}

// DefaultConfig returns the defaults: 24h leaves, at most 7 days; 100 certificates at once per
// caller, then 10 a second.
func DefaultConfig() Config {
	return Config{TrustDomain: "cluster.local", DefaultTTL: 24 * time.Hour, MaxTTL: 7 * 24 * time.Hour,
		ZtunnelServiceAccounts: []string{"istio-system/ztunnel"}, IssueRate: 10, IssueBurst: 100}
}

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []error
	if c.TrustDomain == "" {
		errs = append(errs, errors.New("ca: trust domain is empty"))
	}
	if c.DefaultTTL <= 0 || c.MaxTTL < c.DefaultTTL {
		errs = append(errs, fmt.Errorf("ca: need 0 < default TTL (%v) <= max TTL (%v)", c.DefaultTTL, c.MaxTTL))
	}
	if c.IssueRate <= 0 || c.IssueBurst < 1 {
		errs = append(errs, fmt.Errorf("ca: need issue rate (%v) > 0 and burst (%d) >= 1", c.IssueRate, c.IssueBurst))
	}
	return errors.Join(errs...)
}

// maxCallers bounds the per-caller issuance limiters: one per proxy pod, with room.
const maxCallers = 65536

// Service implements cav1.CertificateServiceServer.
type Service struct {
	cav1.UnimplementedCertificateServiceServer
	log     *slog.Logger
	cfg     Config
	keeper  *Keeper
	auth    authn.Authenticator
	pods    PodsOnNode
	ztunnel map[string]bool
	issue   *limit.Keyed

	issued *prometheus.CounterVec
	denied *prometheus.CounterVec
}

// NewService returns the CA's gRPC service, signing with the keeper's current authority; reg may
// be nil.
func NewService(log *slog.Logger, cfg Config, k *Keeper, auth authn.Authenticator, pods PodsOnNode, reg prometheus.Registerer) *Service {
	s := &Service{
		log: log.With("component", "ca"), cfg: cfg, keeper: k, auth: auth, pods: pods, ztunnel: map[string]bool{},
		issue: limit.New(rate.Limit(cfg.IssueRate), cfg.IssueBurst, maxCallers, nil),
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istiod_lite_ca_certificates_issued_total", Help: "Workload certificates issued, by caller role.",
		}, []string{"role"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istiod_lite_ca_requests_denied_total", Help: "CreateCertificate requests refused, by reason.",
		}, []string{"reason"}),
	}
	for _, sa := range cfg.ZtunnelServiceAccounts {
		s.ztunnel[sa] = true
	}
	if reg != nil {
		reg.MustRegister(s.issued, s.denied)
	}
	return s
}

// CreateCertificate authenticates the caller, limits its rate, checks it may hold the identity
// its CSR names with the key it offers, and signs.
func (s *Service) CreateCertificate(ctx context.Context, req *cav1.CreateCertificateRequest) (*cav1.CreateCertificateResponse, error) {
	caller, err := s.auth.Authenticate(ctx)
	if err != nil {
		switch {
		case errors.Is(err, authn.ErrUnauthenticated):
			return nil, s.deny("unauthenticated", codes.Unauthenticated, err.Error())
		case errors.Is(err, authn.ErrTooManyReviews):
			return nil, s.deny("review_limited", codes.ResourceExhausted, err.Error())
		}
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	// Before the CSR is even parsed: checking its signature is the costly part.
	who := caller.Namespace + "/" + caller.ServiceAccount + "/" + caller.PodUID
	if !s.issue.Allow(who) {
		return nil, s.deny("rate_limited", codes.ResourceExhausted,
			fmt.Sprintf("certificate requests of %s/%s over %d at once and %v a second; retry later", caller.Namespace, caller.ServiceAccount, s.cfg.IssueBurst, s.cfg.IssueRate))
	}
	csr, id, err := s.parseCSR(req.GetCsr())
	if err != nil {
		return nil, s.deny("bad_csr", codes.InvalidArgument, err.Error())
	}
	role := "workload"
	if s.ztunnel[caller.Namespace+"/"+caller.ServiceAccount] {
		role = "ztunnel"
		if err := s.ztunnelMayHold(caller, id); err != nil {
			s.log.Info("certificate refused", "caller", caller.Namespace+"/"+caller.ServiceAccount, "node", caller.NodeName, "identity", id.String(), "err", err)
			return nil, s.deny("not_on_node", codes.PermissionDenied, err.Error())
		}
	} else if own := (identity.Identity{TrustDomain: s.cfg.TrustDomain, Namespace: caller.Namespace, ServiceAccount: caller.ServiceAccount}); id != own {
		// Waypoints and other proxies hold only their own identity.
		return nil, s.deny("not_own_identity", codes.PermissionDenied,
			fmt.Sprintf("caller %s may not hold %s", own, id))
	}
	ttl := s.cfg.DefaultTTL
	if v := time.Duration(req.GetValidityDuration()) * time.Second; v > 0 {
		ttl = min(v, s.cfg.MaxTTL)
	}
	chain, err := s.keeper.Authority().Sign(csr, id.URL(), ttl)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	s.issued.WithLabelValues(role).Inc()
	return &cav1.CreateCertificateResponse{CertChain: chain}, nil
}

func (s *Service) deny(reason string, code codes.Code, msg string) error {
	s.denied.WithLabelValues(reason).Inc()
	return status.Error(code, msg)
}

// parseCSR checks the CSR's key and signature and returns the one identity it asks for, in this
// CA's trust domain.
func (s *Service) parseCSR(p string) (*x509.CertificateRequest, identity.Identity, error) {
	blk, _ := pem.Decode([]byte(p))
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, identity.Identity{}, errors.New("csr is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, identity.Identity{}, fmt.Errorf("parse csr: %w", err)
	}
	// The key first: checking the signature of a huge RSA key is what costs.
	if err := checkKey(csr.PublicKey); err != nil {
		return nil, identity.Identity{}, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, identity.Identity{}, fmt.Errorf("csr signature: %w", err)
	}
	if len(csr.URIs) != 1 {
		return nil, identity.Identity{}, fmt.Errorf("csr must name exactly one URI SAN, has %d", len(csr.URIs))
	}
	id, err := identity.FromURL(csr.URIs[0])
	if err != nil {
		return nil, identity.Identity{}, err
	}
	if id.TrustDomain != s.cfg.TrustDomain {
		return nil, identity.Identity{}, fmt.Errorf("identity %s is not in trust domain %s", id, s.cfg.TrustDomain)
	}
	return csr, id, nil
}

// RSA keys signed: at least 2048 bits (NIST SP 800-131A); at most 8192, which bounds what
// verifying a CSR's signature costs.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// checkKey accepts the keys workload certificates may carry: EC on P-256 or P-384, and RSA of
// minRSABits to maxRSABits.
func checkKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("csr key on curve %s: only P-256 and P-384 are signed", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < minRSABits || n > maxRSABits {
			return fmt.Errorf("csr RSA key of %d bits: only %d to %d are signed", n, minRSABits, maxRSABits)
		}
		return nil
	}
	return fmt.Errorf("csr key of type %T: only EC P-256/P-384 and RSA >= %d are signed", pub, minRSABits)
}

// ztunnelMayHold allows an identity when a running pod with that service account is scheduled on
// the ztunnel's own node, so a compromised node cannot mint identities of workloads elsewhere.
func (s *Service) ztunnelMayHold(caller *authn.Caller, id identity.Identity) error {
	if caller.NodeName == "" {
		return errors.New("ztunnel token is not bound to a pod on a node")
	}
	pods, err := s.pods(caller.NodeName)
	if err != nil {
		return fmt.Errorf("list pods on %s: %w", caller.NodeName, err)
	}
	for _, p := range pods {
		psa := p.Spec.ServiceAccountName
		if psa == "" {
			psa = "default"
		}
		if p.Namespace == id.Namespace && psa == id.ServiceAccount && p.Spec.NodeName == caller.NodeName &&
			p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			return nil
		}
	}
	return fmt.Errorf("no pod with service account %s/%s on node %s", id.Namespace, id.ServiceAccount, caller.NodeName)
}
