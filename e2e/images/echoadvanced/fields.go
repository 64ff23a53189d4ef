// Package echoadvanced is the lab's stand-in for registry.k8s.io/gateway-api/echo-advanced, the
// image the Gateway API conformance suite deploys for its mesh tests (Istio's "echo" test app).
// One program plays both of the image's executables: the server (the container's entrypoint:
// HTTP/1.1 + h2c ports, optionally over TLS, gRPC ports serving Istio's proto.EchoTestService,
// and TCP echo ports) and `client`, which the suite runs with `kubectl exec` to send requests
// from inside a pod and whose output it parses (conformance/utils/echo/parse.go).
//
// fields.go holds the wire format both sides share. Rules it keeps, because the suite's parser
// reads them with regular expressions over the client's whole output:
//   - a server's answer is lines of "Key=Value" (an HTTP body, a gRPC EchoResponse.message, the
//     first bytes a TCP port writes);
//   - the client prefixes its own lines with "[i] " and every line of an answer with "[i body] ",
//     i being the request's index;
//   - headers are "RequestHeader=Name:value" / "[i] ResponseHeader=Name:value", one a value;
//   - with --count the requests' outputs are printed in index order, one blank line apart (the
//     suite splits a batch on "\n\n").
package echoadvanced

import (
	"fmt"
	"io"
	"os"
)

// Field names as the suite's parser (and Istio's echo) spells them.
const (
	fieldServiceVersion = "ServiceVersion"
	fieldServicePort    = "ServicePort"
	fieldStatusCode     = "StatusCode"
	fieldURL            = "URL" // the path the server received
	fieldForwarderURL   = "Url" // the URL the client requested
	fieldEcho           = "Echo"
	fieldHeader         = "Header" // a header the client sent
	fieldHost           = "Host"
	fieldHostname       = "Hostname"
	fieldNamespace      = "Namespace"
	fieldMethod         = "Method"
	fieldProto          = "Proto"
	fieldAlpn           = "Alpn"
	fieldSNI            = "Sni"
	fieldRequestHeader  = "RequestHeader"
	fieldResponseHeader = "ResponseHeader"
	fieldCluster        = "Cluster"
	fieldIstioVersion   = "IstioVersion"
	fieldIP             = "IP"       // the requester's address, as the server saw it
	fieldSourceIP       = "SourceIP" // the requester's address, as the client saw it
	fieldLatency        = "Latency"
	fieldActiveRequests = "ActiveRequests"
)

// writeField writes one "Key=Value" line of a server's answer.
func writeField(w io.Writer, key, value string) {
	fmt.Fprintf(w, "%s=%s\n", key, value)
}

// writeNonEmpty writes the line only for a value.
func writeNonEmpty(w io.Writer, key, value string) {
	if value != "" {
		writeField(w, key, value)
	}
}

// writeReqField writes one of the client's own lines for request i.
func writeReqField(w io.Writer, i int, key, value string) {
	fmt.Fprintf(w, "[%d] %s=%s\n", i, key, value)
}

// writeBodyLine writes one line of request i's answer.
func writeBodyLine(w io.Writer, i int, line string) {
	fmt.Fprintf(w, "[%d body] %s\n", i, line)
}

// hostname is the name the server reports as Hostname: the pod's name, which a pod runtime sets
// as the UTS host name (and in $HOSTNAME).
func hostname() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return os.Getenv("HOSTNAME")
}
