package redirect

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The inbound hooks of an enrolled pod's network namespace: steer_sk_lookup on the namespace,
// and drop_syn at tcx ingress of each of its interfaces but loopback. drop_syn silently drops
// a SYN that sk_lookup could only refuse with a RST (no proxy listener), before TCP looks up a
// socket: the client retransmits and gets through once the proxy listens again, and nothing
// in user space has to stay alive for that. Their links are pinned as
// links/sk_lookup_<netns cookie> and links/tcx_ingress_<netns cookie>_<ifindex>.
const (
	skLookupPinPrefix = "sk_lookup_"
	tcxPinPrefix      = "tcx_ingress_"
)

// nsPrograms are the programs loaded for one namespace.
type nsPrograms struct {
	SkLookup *ebpf.Program `ebpf:"steer_sk_lookup"`
	DropSyn  *ebpf.Program `ebpf:"drop_syn"`
}

func (p *nsPrograms) Close() error {
	return errors.Join(p.SkLookup.Close(), p.DropSyn.Close())
}

// loadNSPrograms loads a copy of the inbound programs for one namespace: sk_lookup programs
// cannot ask the kernel which namespace they run in, so the cookie is a constant of the copy.
// The links hold the programs; the caller closes the copy once it has attached it.
func (r *Redirector) loadNSPrograms(netns uint64) (*nsPrograms, error) {
	spec := r.spec.Copy()
	if err := spec.Variables["pod_netns"].Set(netns); err != nil {
		return nil, err
	}
	var p nsPrograms
	if err := spec.LoadAndAssign(&p, r.opts); err != nil {
		return nil, fmt.Errorf("load inbound programs: %w", err)
	}
	return &p, nil
}

// nsPin is a pinned link of a namespace's inbound hooks.
type nsPin struct {
	path    string
	netns   uint64
	ifindex int // of the tcx link's interface; 0 for sk_lookup
}

func (p *nsPrograms) forPin(pin nsPin) *ebpf.Program {
	if pin.ifindex == 0 {
		return p.SkLookup
	}
	return p.DropSyn
}

// nsPins lists the pinned links of the inbound hooks, of every namespace or, when netns is not
// 0, of that one.
func nsPins(cfg Config, netns uint64) ([]nsPin, error) {
	entries, err := os.ReadDir(cfg.linkDir())
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var pins []nsPin
	for _, e := range entries {
		p, ok := parseNSPin(e.Name())
		if !ok || (netns != 0 && p.netns != netns) {
			continue
		}
		p.path = filepath.Join(cfg.linkDir(), e.Name())
		pins = append(pins, p)
	}
	return pins, nil
}

func parseNSPin(name string) (nsPin, bool) {
	if s, ok := strings.CutPrefix(name, skLookupPinPrefix); ok {
		netns, err := strconv.ParseUint(s, 10, 64)
		return nsPin{netns: netns}, err == nil
	}
	if s, ok := strings.CutPrefix(name, tcxPinPrefix); ok {
		c, i, ok := strings.Cut(s, "_")
		netns, err := strconv.ParseUint(c, 10, 64)
		ifindex, ierr := strconv.Atoi(i)
		return nsPin{netns: netns, ifindex: ifindex}, ok && err == nil && ierr == nil && ifindex > 0
	}
	return nsPin{}, false
}

func (r *Redirector) skLookupPin(netns uint64) string {
	return filepath.Join(r.cfg.linkDir(), skLookupPinPrefix+strconv.FormatUint(netns, 10))
}

func (r *Redirector) tcxPin(netns uint64, ifindex int) string {
	return filepath.Join(r.cfg.linkDir(), tcxPinPrefix+strconv.FormatUint(netns, 10)+"_"+strconv.Itoa(ifindex))
}

// updateNSPins switches every pinned inbound link to a copy of the programs just loaded, and
// drops the pins of namespaces and interfaces that are gone (a pod deleted while no agent ran).
func (r *Redirector) updateNSPins() error {
	pins, err := nsPins(r.cfg, 0)
	if err != nil {
		return err
	}
	byNS := map[uint64][]nsPin{}
	for _, p := range pins {
		byNS[p.netns] = append(byNS[p.netns], p)
	}
	for netns, pins := range byNS {
		if err := r.updateNS(netns, pins); err != nil {
			return fmt.Errorf("update inbound hooks of netns cookie %d: %w", netns, err)
		}
	}
	return nil
}

func (r *Redirector) updateNS(netns uint64, pins []nsPin) error {
	progs, err := r.loadNSPrograms(netns)
	if err != nil {
		return err
	}
	defer progs.Close()
	for _, p := range pins {
		err := attachOrUpdate(p.path, progs.forPin(p), nil)
		if errors.Is(err, unix.ENOLINK) { // the namespace or the interface is gone
			err = detachPinned(p.path)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(p.path), err)
		}
	}
	return nil
}

// AttachSKLookup attaches the inbound hooks to the network namespace at nsPath: sk_lookup,
// which steers new connections to the proxy's listeners, and drop_syn at tcx ingress of every
// interface the namespace has but loopback, which drops a SYN silently when the proxy has no
// listener for it. Their links are pinned, so they live as long as the namespace (the
// interface) or until DetachSKLookup. It is idempotent; calling it again attaches drop_syn to
// interfaces added since and forgets those removed. It returns the namespace's cookie.
func (r *Redirector) AttachSKLookup(nsPath string) (uint64, error) {
	ns, err := os.Open(nsPath)
	if err != nil {
		return 0, fmt.Errorf("attach inbound hooks to netns %s: %w", nsPath, err)
	}
	defer ns.Close()
	cookie, err := netnsCookieFD(int(ns.Fd()))
	if err != nil {
		return 0, fmt.Errorf("attach inbound hooks to netns %s: %w", nsPath, err)
	}
	if err := r.attachInbound(int(ns.Fd()), cookie); err != nil {
		return 0, fmt.Errorf("attach inbound hooks to netns %s (cookie %d): %w", nsPath, cookie, err)
	}
	return cookie, nil
}

func (r *Redirector) attachInbound(nsFD int, netns uint64) error {
	progs, err := r.loadNSPrograms(netns)
	if err != nil {
		return err
	}
	defer progs.Close()

	// drop_syn first, so that sk_lookup never meets a SYN without a listener alone.
	present := map[int]bool{}
	err = inNetNS(nsFD, func() error {
		if err := migrateRequests(); err != nil {
			return err
		}
		// The tcx link resolves the interface index in the calling thread's namespace.
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		for _, ifi := range ifs {
			if ifi.Flags&net.FlagLoopback != 0 {
				continue // traffic from the pod to itself; sk_lookup lets it pass too
			}
			present[ifi.Index] = true
			err := attachOrUpdate(r.tcxPin(netns, ifi.Index), progs.DropSyn, func() (link.Link, error) {
				return link.AttachTCX(link.TCXOptions{Interface: ifi.Index, Program: progs.DropSyn, Attach: ebpf.AttachTCXIngress})
			})
			if err != nil {
				return fmt.Errorf("tcx ingress of %s: %w", ifi.Name, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	pins, err := nsPins(r.cfg, netns)
	if err != nil {
		return err
	}
	for _, p := range pins {
		if p.ifindex != 0 && !present[p.ifindex] {
			if err := detachPinned(p.path); err != nil {
				return fmt.Errorf("%s: %w", filepath.Base(p.path), err)
			}
		}
	}

	return attachOrUpdate(r.skLookupPin(netns), progs.SkLookup, func() (link.Link, error) {
		return link.AttachNetNs(nsFD, progs.SkLookup)
	})
}

// migrateRequests turns on net.ipv4.tcp_migrate_req in the calling thread's namespace: when a
// proxy closes a listener (a ztunnel draining during a rolling update), the connections in its
// accept queue and its half-open ones move to the listener bound beside it (the new ztunnel,
// SO_REUSEPORT) instead of being reset. /proc/sys/net is the opening thread's namespace's.
func migrateRequests() error {
	const path = "/proc/sys/net/ipv4/tcp_migrate_req"
	if err := os.WriteFile(path, []byte("1"), 0); err != nil {
		return fmt.Errorf("hand queued connections to a proxy bound beside one that closes: %w", err)
	}
	return nil
}

// DetachSKLookup detaches the inbound hooks (sk_lookup, then drop_syn) from the namespace; a
// namespace that is gone or was never attached is not an error.
func (r *Redirector) DetachSKLookup(netns uint64) error {
	err := detachPinned(r.skLookupPin(netns))
	if err == nil {
		var pins []nsPin
		pins, err = nsPins(r.cfg, netns)
		for _, p := range pins {
			err = errors.Join(err, detachPinned(p.path))
		}
	}
	if err != nil {
		return fmt.Errorf("detach inbound hooks from netns cookie %d: %w", netns, err)
	}
	return nil
}
