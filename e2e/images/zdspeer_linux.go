package images

// The ZDS peer: a stand-in for ztunnel in the agent's end-to-end tests. It takes pods from the
// node agent over ZDS exactly as ztunnel does, opens the three in-pod listeners in each pod's
// network namespace and registers them with the redirector, and answers every connection with a
// line that says which listener took it. Outbound, it also connects to the original destination
// from the pod's namespace, as ztunnel would, and appends that peer's answer: the connection is
// only let through (not captured again into the peer itself) because the agent exempted the
// peer's cgroup, so the answer proves the exemption.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ambient-mesh/ambient/api/mesh"
	zdsv1 "github.com/ambient-mesh/ambient/api/zds/v1"
	"github.com/ambient-mesh/ambient/redirect"
	"github.com/ambient-mesh/ambient/redirect/zds"
	"golang.org/x/sys/unix"
)

// ZDSPeerConfig configures the peer.
type ZDSPeerConfig struct {
	Socket string // the agent's ZDS socket
	PinDir string // the redirector's pins
	Node   string
}

type zdsPeer struct {
	log    *slog.Logger
	pinned *redirect.Pinned
	mu     sync.Mutex
	pods   map[string]*peerPod
}

type peerPod struct {
	name      string
	cookie    uint64
	netns     *os.File
	listeners []net.Listener
}

// RunZDSPeer serves until ctx ends; cancellation returns nil.
func RunZDSPeer(ctx context.Context, cfg ZDSPeerConfig, log *slog.Logger) error {
	var pinned *redirect.Pinned
	for { // the agent pins the maps when it starts
		var err error
		if pinned, err = redirect.OpenPinned(cfg.PinDir); err == nil {
			break
		}
		log.Info("waiting for the redirector's maps", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
	}
	defer pinned.Close()
	p := &zdsPeer{log: log, pinned: pinned, pods: map[string]*peerPod{}}
	defer p.closeAll()
	zc := zds.DefaultClientConfig()
	zc.Path, zc.Node, zc.Log, zc.Handler = cfg.Socket, cfg.Node, log, p
	return zds.RunClient(ctx, zc)
}

func (p *zdsPeer) AddWorkload(_ context.Context, w *zdsv1.WorkloadInfo, cookie uint64, netns *os.File) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.pods[w.Uid]; ok {
		if old.cookie == cookie {
			netns.Close()
			return nil // a re-add after the agent restarted: keep the listeners
		}
		old.close()
	}
	name := w.Namespace + "/" + w.Name
	ls, err := listenIn(netns, []int{mesh.PortOutbound, mesh.PortInboundPlaintext, mesh.PortHBONE})
	if err != nil {
		netns.Close()
		return fmt.Errorf("listen in %s: %w", name, err)
	}
	pod := &peerPod{name: name, cookie: cookie, netns: netns, listeners: ls}
	if err := errors.Join(
		p.pinned.RegisterListener(cookie, redirect.ListenerInbound, ls[1].(*net.TCPListener)),
		p.pinned.RegisterListener(cookie, redirect.ListenerHBONE, ls[2].(*net.TCPListener)),
	); err != nil {
		pod.close()
		return err
	}
	for i, kind := range []string{"outbound", "inbound", "hbone"} {
		go p.serve(pod, ls[i], kind)
	}
	p.pods[w.Uid] = pod
	p.log.Info("workload added", "pod", name, "netns_cookie", cookie)
	return nil
}

func (p *zdsPeer) KeepWorkload(uid string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.pods[uid]; !ok {
		return fmt.Errorf("keep: unknown workload %s", uid)
	}
	return nil
}

func (p *zdsPeer) DelWorkload(uid string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pod, ok := p.pods[uid]; ok {
		pod.close()
		delete(p.pods, uid)
		p.log.Info("workload removed", "pod", pod.name)
	}
	return nil
}

func (p *zdsPeer) SnapshotDone(replayed map[string]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for uid, pod := range p.pods {
		if !replayed[uid] {
			pod.close()
			delete(p.pods, uid)
		}
	}
}

func (p *zdsPeer) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pod := range p.pods {
		pod.close()
	}
}

func (pp *peerPod) close() {
	for _, l := range pp.listeners {
		l.Close()
	}
	pp.netns.Close()
}

// serve answers each connection once its client has finished sending.
func (p *zdsPeer) serve(pod *peerPod, l net.Listener, kind string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			line := fmt.Sprintf("zdspeer %s pod=%s dst=%s", kind, pod.name, c.LocalAddr())
			if kind == "outbound" {
				peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
				orig, err := p.pinned.LookupOrigDst(netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()))
				if err != nil {
					line += " orig=none"
				} else {
					line += " orig=" + orig.String() + " | " + onward(pod.netns, orig)
				}
			}
			_, _ = io.Copy(io.Discard, c)
			_, _ = io.WriteString(c, line+"\n")
		}()
	}
}

// onward connects to dst from the pod's namespace, sends a line, and returns the first line of
// the answer (or the error).
func onward(netns *os.File, dst netip.AddrPort) string {
	c, err := inNetns(netns, func() (net.Conn, error) {
		d := net.Dialer{Timeout: 2 * time.Second}
		return d.Dial("tcp", dst.String())
	})
	if err != nil {
		return "onward: " + err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	_, _ = io.WriteString(c, "onward")
	_ = c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil && len(b) == 0 {
		return "onward: " + err.Error()
	}
	return strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
}

// inNetns runs fn on a thread in the network namespace: sockets it creates live there.
func inNetns[T any](netns *os.File, fn func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // left locked if the namespace cannot be restored: the thread dies with us
		var r result
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			r.err = err
			done <- r
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(netns.Fd()), unix.CLONE_NEWNET); err != nil {
			r.err = fmt.Errorf("setns: %w", err)
			done <- r
			return
		}
		r.v, r.err = fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		done <- r
	}()
	r := <-done
	return r.v, r.err
}

// listenIn opens TCP listeners on the ports inside the network namespace, as ztunnel does:
// marked, SO_REUSEPORT, no MPTCP (the kernel keeps MPTCP sockets out of a SOCKHASH).
func listenIn(netns *os.File, ports []int) ([]net.Listener, error) {
	return inNetns(netns, func() ([]net.Listener, error) {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = errors.Join(
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1),
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mesh.SocketMark))
			})
			return errors.Join(err, serr)
		}}
		lc.SetMultipathTCP(false)
		var ls []net.Listener
		for _, port := range ports {
			l, err := lc.Listen(context.Background(), "tcp", ":"+strconv.Itoa(port))
			if err != nil {
				for _, l := range ls {
					l.Close()
				}
				return nil, err
			}
			ls = append(ls, l)
		}
		return ls, nil
	})
}
