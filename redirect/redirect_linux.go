package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// DefaultPinDir is where maps and links are pinned on a node (DESIGN.md §5).
const DefaultPinDir = "/sys/fs/bpf/ambient"

// Config says where the programs attach and where their state is pinned.
type Config struct {
	// PinDir is a directory on a bpffs mount; maps go to PinDir/maps, links to PinDir/links.
	PinDir string
	// Cgroup is the cgroup v2 directory the connect, getpeername and sockops programs attach
	// to: the root of the hierarchy on a node (FindCgroup2 on a hybrid host), a throwaway
	// cgroup in tests.
	Cgroup string
}

// Default returns the node configuration.
func Default() Config {
	return Config{PinDir: DefaultPinDir, Cgroup: "/sys/fs/cgroup"}
}

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []error
	if !filepath.IsAbs(c.PinDir) {
		errs = append(errs, fmt.Errorf("pin dir %q is not an absolute path", c.PinDir))
	}
	if !filepath.IsAbs(c.Cgroup) {
		errs = append(errs, fmt.Errorf("cgroup %q is not an absolute path", c.Cgroup))
	}
	return errors.Join(errs...)
}

func (c Config) mapDir() string  { return filepath.Join(c.PinDir, "maps") }
func (c Config) linkDir() string { return filepath.Join(c.PinDir, "links") }

// cgroupHooks are the programs attached to the cgroup, by pin name.
var cgroupHooks = []struct {
	name   string
	attach ebpf.AttachType
	prog   func(*objects) *ebpf.Program
}{
	{"cgroup_connect4", ebpf.AttachCGroupInet4Connect, func(o *objects) *ebpf.Program { return o.Connect4 }},
	{"cgroup_connect6", ebpf.AttachCGroupInet6Connect, func(o *objects) *ebpf.Program { return o.Connect6 }},
	{"cgroup_getpeername4", ebpf.AttachCgroupInet4GetPeername, func(o *objects) *ebpf.Program { return o.Getpeername4 }},
	{"cgroup_getpeername6", ebpf.AttachCgroupInet6GetPeername, func(o *objects) *ebpf.Program { return o.Getpeername6 }},
	{"cgroup_sockops", ebpf.AttachCGroupSockOps, func(o *objects) *ebpf.Program { return o.TrackSockops }},
}

// Redirector holds the loaded programs and pinned maps. Its methods are safe for concurrent
// use (each is a few map operations); Close releases the file descriptors and leaves the
// pinned state, and so redirection, in place.
type Redirector struct {
	cfg  Config
	spec *ebpf.CollectionSpec
	opts *ebpf.CollectionOptions
	objs objects
}

// objects is what the Redirector holds open: the cgroup programs and the maps. The inbound
// programs are loaded once per namespace (loadNSPrograms).
type objects struct {
	Connect4     *ebpf.Program `ebpf:"connect4"`
	Connect6     *ebpf.Program `ebpf:"connect6"`
	Getpeername4 *ebpf.Program `ebpf:"getpeername4"`
	Getpeername6 *ebpf.Program `ebpf:"getpeername6"`
	TrackSockops *ebpf.Program `ebpf:"track_sockops"`

	Enrolled     *ebpf.Map `ebpf:"enrolled"`
	OrigByCookie *ebpf.Map `ebpf:"orig_by_cookie"`
	OrigByPeer   *ebpf.Map `ebpf:"orig_by_peer"`
	ProbePorts   *ebpf.Map `ebpf:"probe_ports"`
	ProbeSrcs    *ebpf.Map `ebpf:"probe_srcs"`
	Listeners    *ebpf.Map `ebpf:"listeners"`
	ProxyCgroups *ebpf.Map `ebpf:"proxy_cgroups"`
}

func (o *objects) Close() error {
	var errs []error
	for _, c := range []interface{ Close() error }{
		o.Connect4, o.Connect6, o.Getpeername4, o.Getpeername6, o.TrackSockops,
		o.Enrolled, o.OrigByCookie, o.OrigByPeer, o.ProbePorts, o.ProbeSrcs, o.Listeners,
		o.ProxyCgroups,
	} {
		errs = append(errs, c.Close()) // nil-safe
	}
	return errors.Join(errs...)
}

// Load loads the programs, creates or reuses the pinned maps and attaches the cgroup hooks.
// Hooks already pinned by an earlier load, including every namespace's inbound hooks, are
// switched to the new programs in place (link.Update), so there is no moment without
// redirection.
func Load(cfg Config) (*Redirector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := checkFS(cfg.Cgroup, unix.CGROUP2_SUPER_MAGIC, "cgroup v2"); err != nil {
		return nil, fmt.Errorf("attach cgroup hooks: %w", err)
	}
	for _, dir := range []string{cfg.mapDir(), cfg.linkDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin dir: %w", err)
		}
	}
	if err := checkFS(cfg.PinDir, unix.BPF_FS_MAGIC, "bpffs"); err != nil {
		return nil, fmt.Errorf("pin dir: %w", err)
	}
	spec, err := loadRedirect()
	if err != nil {
		return nil, err
	}
	for name, m := range spec.Maps {
		if !strings.HasPrefix(name, ".") { // .rodata is per program, not shared state
			m.Pinning = ebpf.PinByName
		}
	}
	r := &Redirector{cfg: cfg, spec: spec, opts: &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.mapDir()}}}
	if err := spec.LoadAndAssign(&r.objs, r.opts); err != nil {
		return nil, fmt.Errorf("load programs: %w", err)
	}
	for _, h := range cgroupHooks {
		if err := attachOrUpdate(filepath.Join(cfg.linkDir(), h.name), h.prog(&r.objs), func() (link.Link, error) {
			return link.AttachCgroup(link.CgroupOptions{Path: cfg.Cgroup, Attach: h.attach, Program: h.prog(&r.objs)})
		}); err != nil {
			r.Close()
			return nil, fmt.Errorf("attach %s to cgroup %s: %w", h.name, cfg.Cgroup, err)
		}
	}
	if err := r.updateNSPins(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// attachOrUpdate points the link pinned at pin to prog, or, when there is none and attach is
// not nil, attaches and pins a new one. With attach, a pinned link whose target is gone (an
// interface whose index was reused) is replaced.
func attachOrUpdate(pin string, prog *ebpf.Program, attach func() (link.Link, error)) error {
	l, err := link.LoadPinnedLink(pin, nil)
	switch {
	case err == nil:
		err = l.Update(prog)
		l.Close()
		if !errors.Is(err, unix.ENOLINK) || attach == nil {
			return err
		}
		if err := detachPinned(pin); err != nil {
			return err
		}
	case !errors.Is(err, os.ErrNotExist) || attach == nil:
		return err
	}
	l, err = attach()
	if err != nil {
		return err
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return errors.Join(err, l.Detach())
	}
	return nil
}

// Close releases the file descriptors; pinned maps and links stay.
func (r *Redirector) Close() error {
	return r.objs.Close()
}

// Enrol starts capturing the pod's traffic: outbound at once, inbound once the inbound hooks
// are attached to its namespace (AttachSKLookup); until the proxy has registered its listeners,
// inbound connections are dropped. Enrolling an enrolled namespace replaces its addresses and
// probe ports.
func (r *Redirector) Enrol(p Pod) error {
	if err := r.enrol(p); err != nil {
		return fmt.Errorf("enrol netns cookie %d: %w", p.NetNS, err)
	}
	return nil
}

func (r *Redirector) enrol(p Pod) error {
	v, err := podValue(p.IPs)
	if err != nil {
		return err
	}
	// Probe entries go first, and stale ones are removed last, so the namespace is never
	// enrolled with fewer pass-through rules than the caller asked for, nor with more for long.
	ports := map[redirectProbePortKey]bool{}
	for _, port := range p.ProbePorts {
		k := redirectProbePortKey{Netns: p.NetNS, Port: port}
		ports[k] = true
		if err := r.objs.ProbePorts.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("probe port %d: %w", port, err)
		}
	}
	srcs := map[redirectProbeSrcKey]bool{}
	for _, src := range p.ProbeSources {
		k := redirectProbeSrcKey{Netns: p.NetNS, Ip: ip16(src)}
		srcs[k] = true
		if err := r.objs.ProbeSrcs.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("probe source %v: %w", src, err)
		}
	}
	if err := r.objs.Enrolled.Put(p.NetNS, v); err != nil {
		return err
	}
	return errors.Join(
		deleteWhere(r.objs.ProbePorts, func(k redirectProbePortKey) bool { return k.Netns == p.NetNS && !ports[k] }),
		deleteWhere(r.objs.ProbeSrcs, func(k redirectProbeSrcKey) bool { return k.Netns == p.NetNS && !srcs[k] }),
	)
}

// Unenrol stops capturing the namespace's traffic and forgets its probe ports and listeners.
// It does not detach the inbound hooks (DetachSKLookup does); with the namespace unenrolled
// they let everything pass.
func (r *Redirector) Unenrol(netns uint64) error {
	err := r.objs.Enrolled.Delete(netns)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		err = nil
	}
	err = errors.Join(err,
		deleteWhere(r.objs.ProbePorts, func(k redirectProbePortKey) bool { return k.Netns == netns }),
		deleteWhere(r.objs.ProbeSrcs, func(k redirectProbeSrcKey) bool { return k.Netns == netns }),
		r.deleteListener(netns, ListenerInbound),
		r.deleteListener(netns, ListenerHBONE),
	)
	if err != nil {
		return fmt.Errorf("unenrol netns cookie %d: %w", netns, err)
	}
	return nil
}

func (r *Redirector) deleteListener(netns uint64, kind ListenerKind) error {
	err := r.objs.Listeners.Delete(redirectListenerKey{Netns: netns, Kind: uint32(kind)})
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

// deleteWhere deletes the keys of m that match.
func deleteWhere[K comparable](m *ebpf.Map, match func(K) bool) error {
	var (
		k    K
		v    []byte
		dead []K
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if match(k) {
			dead = append(dead, k)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range dead {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

func detachPinned(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer l.Close()
	// Detach first: should unpinning fail, the hook is still gone. A link whose namespace is
	// gone is detached already.
	err = l.Detach()
	if errors.Is(err, unix.ENOLINK) {
		err = nil
	}
	return errors.Join(err, l.Unpin())
}

// RegisterListener makes conn, a listening TCP socket the proxy opened inside the namespace,
// the target of the namespace's inbound connections of that kind. The kernel drops the entry
// when the socket closes, and inbound SYNs are then dropped (silently, see AttachSKLookup)
// until a new one is registered.
func (r *Redirector) RegisterListener(netns uint64, kind ListenerKind, conn syscall.Conn) error {
	if err := r.registerListener(netns, kind, conn); err != nil {
		return fmt.Errorf("register %s listener for netns cookie %d: %w", kind, netns, err)
	}
	return nil
}

func (r *Redirector) registerListener(netns uint64, kind ListenerKind, conn syscall.Conn) error {
	if kind != ListenerInbound && kind != ListenerHBONE {
		return fmt.Errorf("unknown listener kind")
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	err = raw.Control(func(fd uintptr) {
		got, err := socketNetNSCookie(int(fd))
		if err != nil {
			opErr = err
			return
		}
		if got != netns {
			opErr = fmt.Errorf("socket is in netns cookie %d", got)
			return
		}
		if listening, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || listening != 1 {
			opErr = fmt.Errorf("socket is not listening")
			return
		}
		if proto, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL); err == nil && proto == unix.IPPROTO_MPTCP {
			// Go listens with MPTCP by default; the kernel refuses MPTCP sockets in a SOCKHASH.
			opErr = fmt.Errorf("MPTCP socket: listen with net.ListenConfig.SetMultipathTCP(false)")
			return
		}
		opErr = r.objs.Listeners.Put(redirectListenerKey{Netns: netns, Kind: uint32(kind)}, uint64(fd))
	})
	return errors.Join(err, opErr)
}

// LookupOrigDst returns and forgets the original destination of the captured connection whose
// source address is peer (the RemoteAddr of the connection the proxy accepted on its outbound
// listener). It returns ErrNoOrigDst if there is none.
func (r *Redirector) LookupOrigDst(peer netip.AddrPort) (netip.AddrPort, error) {
	var orig redirectAddr
	err := r.objs.OrigByPeer.LookupAndDelete(addrKey(peer), &orig)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return netip.AddrPort{}, fmt.Errorf("orig dst of %v: %w", peer, ErrNoOrigDst)
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("orig dst of %v: %w", peer, err)
	}
	return orig.addrPort(), nil
}

// AllowProxyCgroup exempts from capture the connections made by processes in the cgroup v2
// with that id (CgroupID) or in any cgroup below it: the agent registers the proxy's pod cgroup,
// whose containers are its children. This, not the socket mark, is what keeps the proxy's own
// connections from being redirected back to it. Up to 16 levels below the hierarchy's root are
// looked at (MAX_CGROUP_LEVEL in bpf/redirect.c). Allowing an allowed cgroup is a no-op.
func (r *Redirector) AllowProxyCgroup(id uint64) error {
	if id == 0 {
		return errors.New("allow proxy cgroup: id 0")
	}
	if err := r.objs.ProxyCgroups.Put(id, uint8(1)); err != nil {
		return fmt.Errorf("allow proxy cgroup %d: %w", id, err)
	}
	return nil
}

// ForgetProxyCgroup captures the cgroup's connections again. Forgetting a cgroup that is not
// allowed is not an error.
func (r *Redirector) ForgetProxyCgroup(id uint64) error {
	err := r.objs.ProxyCgroups.Delete(id)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("forget proxy cgroup %d: %w", id, err)
	}
	return nil
}

// ProxyCgroups returns the ids of the allowed proxy cgroups, in increasing order.
func (r *Redirector) ProxyCgroups() ([]uint64, error) {
	var (
		id  uint64
		v   uint8
		ids []uint64
	)
	it := r.objs.ProxyCgroups.Iterate()
	for it.Next(&id, &v) {
		ids = append(ids, id)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list proxy cgroups: %w", err)
	}
	slices.Sort(ids)
	return ids, nil
}

var _ Datapath = (*Redirector)(nil)

// Uninstall detaches every hook (cgroup, sk_lookup and tcx) and removes the pin directory.
// The Redirector is closed.
func (r *Redirector) Uninstall() error {
	return errors.Join(r.Close(), Uninstall(r.cfg))
}

// Uninstall detaches every hook pinned under cfg.PinDir and removes the directory, without
// loading anything; it is what a node runs to leave nothing behind.
func Uninstall(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	entries, err := os.ReadDir(cfg.linkDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("uninstall: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if err := detachPinned(filepath.Join(cfg.linkDir(), e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("uninstall: detach %s: %w", e.Name(), err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err // keep the map pins: the hooks still attached use them
	}
	// Unlinking the map pins frees the maps once no program holds them.
	if err := os.RemoveAll(cfg.PinDir); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	return nil
}
