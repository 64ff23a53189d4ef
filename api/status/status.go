// Package status is the contract between the mesh's components and ambientctl: the JSON document
// ztunnel and istiod-lite serve at Path on their metrics port (mesh.PortMetrics), which ambientctl
// reads through the API server's pod proxy, so that it works on any cluster without
// port-forwarding. It holds no secret (no key, no token). Fields are only ever added.
package status

import "time"

// Path is where a component serves its status.
const Path = "/debug/status"

// Ztunnel is one ztunnel's state.
type Ztunnel struct {
	Version string `json:"version"`
	Ready   bool   `json:"ready"`
	// XDS is the configuration stream from istiod-lite.
	XDS XDS `json:"xds"`
	// Pods are the node's enrolled pods ztunnel serves (listeners open in their namespaces).
	Pods []Pod `json:"pods"`
	// Certificates are the workload certificates it holds, one per identity.
	Certificates []Certificate `json:"certificates"`
	// Workloads, Services and Authorizations count the configuration it holds.
	Workloads      int `json:"workloads"`
	Services       int `json:"services"`
	Authorizations int `json:"authorizations"`
}

// XDS is a client's view of its configuration stream.
type XDS struct {
	Connected bool               `json:"connected"`
	Types     map[string]XDSType `json:"types"`
}

// XDSType is one resource type of the stream.
type XDSType struct {
	Synced    bool      `json:"synced"`
	LastACK   time.Time `json:"lastAck,omitzero"`
	NACKs     uint64    `json:"nacks"`
	Resources int       `json:"resources"`
}

// Pod is an enrolled pod.
type Pod struct {
	Namespace      string   `json:"namespace"`
	Name           string   `json:"name"`
	ServiceAccount string   `json:"serviceAccount"`
	IPs            []string `json:"ips"`
}

// Certificate is a workload certificate's state.
type Certificate struct {
	Identity  string    `json:"identity"`
	State     string    `json:"state"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
	LastError string    `json:"lastError,omitempty"`
}

// Istiod is one istiod-lite replica's state.
type Istiod struct {
	Version string `json:"version"`
	// Proxies are the xDS clients connected to this replica.
	Proxies []Proxy `json:"proxies"`
	// Problems are what could not be translated as written (also written as Events and
	// conditions on the objects).
	Problems []Problem `json:"problems"`
	// RootNotAfter is when the CA's root certificate expires.
	RootNotAfter time.Time `json:"rootNotAfter,omitzero"`
}

// Proxy is a connected xDS client.
type Proxy struct {
	ID          string    `json:"id"`
	Role        string    `json:"role"`
	Node        string    `json:"node,omitempty"`
	ConnectedAt time.Time `json:"connectedAt"`
	// UpToDate: the proxy ACKed everything sent to it and NACKed nothing since.
	UpToDate bool `json:"upToDate"`
	// LastNACK is the reason of the last rejected update, if any.
	LastNACK string `json:"lastNack,omitempty"`
}

// Problem is a user's object that could not be translated as written.
type Problem struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Reason    string `json:"reason"`
	Message   string `json:"message"`
}

// Paths of what a ztunnel holds, served beside Path (ambientctl workloads, services).
const (
	WorkloadsPath = "/debug/workloads"
	ServicesPath  = "/debug/services"
)

// Workload is a workload as a ztunnel knows it.
type Workload struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Node      string   `json:"node"`
	IPs       []string `json:"ips"`
	Identity  string   `json:"identity"`
	Protocol  string   `json:"protocol"` // HBONE or TCP (not in the mesh)
	Waypoint  string   `json:"waypoint,omitempty"`
	Healthy   bool     `json:"healthy"`
}

// Service is a service as a ztunnel knows it.
type Service struct {
	Namespace string   `json:"namespace"`
	Hostname  string   `json:"hostname"`
	VIPs      []string `json:"vips"`
	Ports     []string `json:"ports"` // service port -> target port (a name when the target is named)
	Endpoints int      `json:"endpoints"`
	Waypoint  string   `json:"waypoint,omitempty"`
}
