// Package mesh holds the constants every component agrees on: labels, annotations, ports and
// socket marks (DESIGN.md §2 and §4). It has no dependencies and no behaviour.
package mesh

// Labels and annotations of the user-facing API.
const (
	LabelDataplaneMode        = "istio.io/dataplane-mode"
	DataplaneModeAmbient      = "ambient"
	DataplaneModeNone         = "none"
	LabelUseWaypoint          = "istio.io/use-waypoint"
	LabelUseWaypointNamespace = "istio.io/use-waypoint-namespace"
	LabelWaypointFor          = "istio.io/waypoint-for"
	AnnotationRedirection     = "ambient.istio.io/redirection"
	// AnnotationProxyConfig is Istio's per-proxy settings (a ProxyConfig in YAML or JSON). On a
	// waypoint Gateway its concurrency is honoured: the cores the waypoint runs on.
	AnnotationProxyConfig = "proxy.istio.io/config"
	RedirectionEnabled    = "enabled"
	RedirectionPending    = "pending"
	RedirectionDisabled   = "disabled"
	WaypointGatewayClass  = "istio-waypoint"
	// ControllerName is the mesh's Gateway API controller name, in route parent status (Istio's).
	ControllerName             = "istio.io/mesh-controller"
	WaypointListenerName       = "mesh"
	WaypointListenerProtocolHB = "HBONE"
)

// Ports (DESIGN.md §4).
const (
	PortOutbound         = 15001
	PortInboundPlaintext = 15006
	PortHBONE            = 15008
	PortDNS              = 15053
	PortAdmin            = 15000
	PortMetrics          = 15020
	PortReadiness        = 15021
	PortXDS              = 15010
	PortXDSTLS           = 15012
)

// SocketMark is the SO_MARK carried by every socket that ztunnel or a waypoint opens. It exempts
// nothing from capture (an application could set it too): the redirector lets a proxy's sockets
// through by the proxy's cgroup, which the node agent registers.
const SocketMark = 0x539

// TokenAudience is the audience of the service-account tokens proxies present to istiod-lite
// (xDS and CA), as in Istio: a token issued for the API server, which every pod may hold, is not
// accepted, and a token for istio-ca is of no use against the API server.
const TokenAudience = "istio-ca"
