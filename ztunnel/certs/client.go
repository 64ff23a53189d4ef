package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	cav1 "github.com/ambient-mesh/ambient/api/ca/v1"
)

// IstiodTLS returns the TLS configuration that verifies istiod-lite (xDS and CA), from the root
// certificate in rootFile (the istio-ca-root-cert ConfigMap) and the name its certificate carries,
// and that root as a pool: until the mesh's trust bundle arrives over xDS it verifies peers too.
func IstiodTLS(rootFile, serverName string) (*tls.Config, *x509.CertPool, error) {
	rootPEM, err := os.ReadFile(rootFile)
	if err != nil {
		return nil, nil, fmt.Errorf("read istiod-lite's root certificate: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		return nil, nil, fmt.Errorf("%s holds no certificate", rootFile)
	}
	return &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12}, roots, nil
}

// CertificateClient is the CA's one call, as cav1.CertificateServiceClient has it, so tests can
// fake the CA.
type CertificateClient interface {
	CreateCertificate(ctx context.Context, in *cav1.CreateCertificateRequest, opts ...grpc.CallOption) (*cav1.CreateCertificateResponse, error)
}

// CAClient is a gRPC client of istiod-lite's CA.
type CAClient struct {
	cav1.CertificateServiceClient
	conn *grpc.ClientConn
}

// Close closes the connection.
func (c *CAClient) Close() error { return c.conn.Close() }

// DialCA returns a client of the CA at addr (host:port) over TLS that authenticates each call
// with "authorization: Bearer <token>", the token read from tokenFile at every call since
// projected service-account tokens rotate. The connection is made on the first call; ctx only
// cancels the dial itself.
func DialCA(ctx context.Context, addr string, tlsConfig *tls.Config, tokenFile string) (*CAClient, error) {
	var errs []error
	if addr == "" {
		errs = append(errs, errors.New("missing address"))
	}
	if tlsConfig == nil {
		errs = append(errs, errors.New("missing TLS config: the token is never sent in the clear"))
	} else if tlsConfig.InsecureSkipVerify {
		errs = append(errs, errors.New("TLS InsecureSkipVerify: would send the token to anyone"))
	}
	if tokenFile == "" {
		errs = append(errs, errors.New("missing token file"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("dial CA: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("dial CA: %w", err)
	}
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)),
		grpc.WithPerRPCCredentials(bearerFile(tokenFile)))
	if err != nil {
		return nil, fmt.Errorf("dial CA: %w", err)
	}
	return &CAClient{CertificateServiceClient: cav1.NewCertificateServiceClient(conn), conn: conn}, nil
}

// bearerFile sends the token in the file, read at each call.
type bearerFile string

func (f bearerFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(string(f))
	if err != nil {
		return nil, fmt.Errorf("read token: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return nil, fmt.Errorf("read token: %s is empty", string(f))
	}
	return map[string]string{"authorization": "Bearer " + t}, nil
}

func (bearerFile) RequireTransportSecurity() bool { return true }
