package ca

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
	"github.com/ambient-mesh/ambient/istiod-lite/authn"
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
}

// DefaultConfig returns the defaults: 24h leaves, at most 7 days.
func DefaultConfig() Config {
	return Config{TrustDomain: "cluster.local", DefaultTTL: 24 * time.Hour, MaxTTL: 7 * 24 * time.Hour,
		ZtunnelServiceAccounts: []string{"istio-system/ztunnel"}}
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
	return errors.Join(errs...)
}

// Service implements cav1.CertificateServiceServer.
type Service struct {
	cav1.UnimplementedCertificateServiceServer
	log     *slog.Logger
	cfg     Config
	ca      *Authority
	auth    authn.Authenticator
	pods    PodsOnNode
	ztunnel map[string]bool

	issued *prometheus.CounterVec
	denied *prometheus.CounterVec
}

// NewService returns the CA's gRPC service; reg may be nil.
func NewService(log *slog.Logger, cfg Config, a *Authority, auth authn.Authenticator, pods PodsOnNode, reg prometheus.Registerer) *Service {
	s := &Service{
		log: log.With("component", "ca"), cfg: cfg, ca: a, auth: auth, pods: pods, ztunnel: map[string]bool{},
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

// CreateCertificate authenticates the caller, checks it may hold the identity its CSR names, and
// signs.
func (s *Service) CreateCertificate(ctx context.Context, req *cav1.CreateCertificateRequest) (*cav1.CreateCertificateResponse, error) {
	caller, err := s.auth.Authenticate(ctx)
	if err != nil {
		if errors.Is(err, authn.ErrUnauthenticated) {
			return nil, s.deny("unauthenticated", codes.Unauthenticated, err.Error())
		}
		return nil, status.Error(codes.Unavailable, err.Error())
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
	} else if want := s.identity(caller.Namespace, caller.ServiceAccount); id.String() != want.String() {
		// Waypoints and other proxies hold only their own identity.
		return nil, s.deny("not_own_identity", codes.PermissionDenied,
			fmt.Sprintf("caller %s may not hold %s", want, id))
	}
	ttl := s.cfg.DefaultTTL
	if v := time.Duration(req.GetValidityDuration()) * time.Second; v > 0 {
		ttl = min(v, s.cfg.MaxTTL)
	}
	chain, err := s.ca.Sign(csr, id, ttl)
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

func (s *Service) identity(ns, sa string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: s.cfg.TrustDomain, Path: "/ns/" + ns + "/sa/" + sa}
}

// parseCSR checks the CSR's signature and returns the one SPIFFE identity it asks for.
func (s *Service) parseCSR(p string) (*x509.CertificateRequest, *url.URL, error) {
	blk, _ := pem.Decode([]byte(p))
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, nil, errors.New("csr is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, nil, fmt.Errorf("csr signature: %w", err)
	}
	if len(csr.URIs) != 1 {
		return nil, nil, fmt.Errorf("csr must name exactly one URI SAN, has %d", len(csr.URIs))
	}
	ns, sa, err := parseSPIFFE(csr.URIs[0], s.cfg.TrustDomain)
	if err != nil {
		return nil, nil, err
	}
	return csr, s.identity(ns, sa), nil
}

func parseSPIFFE(u *url.URL, trustDomain string) (ns, sa string, err error) {
	if u.Scheme != "spiffe" || u.Host != trustDomain || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", "", fmt.Errorf("identity %q is not spiffe://%s/ns/<ns>/sa/<sa>", u, trustDomain)
	}
	parts := strings.Split(u.Path, "/")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "ns" || parts[3] != "sa" || parts[2] == "" || parts[4] == "" {
		return "", "", fmt.Errorf("identity %q is not spiffe://%s/ns/<ns>/sa/<sa>", u, trustDomain)
	}
	return parts[2], parts[4], nil
}

// ztunnelMayHold allows an identity when a running pod with that service account is scheduled on
// the ztunnel's own node, so a compromised node cannot mint identities of workloads elsewhere.
func (s *Service) ztunnelMayHold(caller *authn.Caller, id *url.URL) error {
	if caller.NodeName == "" {
		return errors.New("ztunnel token is not bound to a pod on a node")
	}
	ns, sa, err := parseSPIFFE(id, s.cfg.TrustDomain)
	if err != nil {
		return err
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
		if p.Namespace == ns && psa == sa && p.Spec.NodeName == caller.NodeName &&
			p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			return nil
		}
	}
	return fmt.Errorf("no pod with service account %s/%s on node %s", ns, sa, caller.NodeName)
}
