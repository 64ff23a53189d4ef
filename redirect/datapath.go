package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
)

// Datapath is what the node agent and the proxy need from the redirector: the narrow
// interface at the kernel boundary, which their tests can fake. *Redirector implements it.
type Datapath interface {
	Enrol(Pod) error
	Unenrol(netns uint64) error
	AttachSKLookup(nsPath string) (netns uint64, err error)
	DetachSKLookup(netns uint64) error
	RegisterListener(netns uint64, kind ListenerKind, conn syscall.Conn) error
	LookupOrigDst(peer netip.AddrPort) (netip.AddrPort, error)
	AllowProxyCgroup(id uint64) error
	ForgetProxyCgroup(id uint64) error
	ProxyCgroups() ([]uint64, error)
}

// ErrNoOrigDst is returned by LookupOrigDst when no captured connection has that peer
// address: the proxy must then refuse the connection rather than guess a destination.
var ErrNoOrigDst = errors.New("no original destination")

// Pod is what the programs need to know about an enrolled pod's network namespace.
type Pod struct {
	// NetNS is the namespace's cookie (NetNSCookie).
	NetNS uint64
	// IPs are the pod's addresses, at most one per family. Outbound connections are
	// redirected to the address of their family, port mesh.PortOutbound; a pod without an
	// address of a family cannot connect out over it (fail closed).
	IPs []netip.Addr
	// ProbePorts are the ports kubelet health probes reach the app on directly ...
	ProbePorts []uint16
	// ... when they come from one of ProbeSources (the node's addresses towards the pod).
	ProbeSources []netip.Addr
}

// ListenerKind names one of the proxy's listeners that sk_lookup assigns inbound connections to.
// With no listener of the kind registered, such connections are dropped.
type ListenerKind uint32

// Listener kinds; the values are the kind field of the listeners map key (bpf/redirect.c).
const (
	// ListenerInbound is the inbound plaintext listener (mesh.PortInboundPlaintext): every
	// inbound connection except those to mesh.PortHBONE.
	ListenerInbound ListenerKind = 0
	// ListenerHBONE is the HBONE listener: inbound connections to mesh.PortHBONE.
	ListenerHBONE ListenerKind = 1
)

func (k ListenerKind) String() string {
	switch k {
	case ListenerInbound:
		return "inbound"
	case ListenerHBONE:
		return "hbone"
	}
	return fmt.Sprintf("kind(%d)", uint32(k))
}
