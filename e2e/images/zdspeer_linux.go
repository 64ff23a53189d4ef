package images

// The ZDS peer: a stand-in for ztunnel in the agent's end-to-end tests. It takes pods from the
// node agent over ZDS through ztunnel's own in-pod listener manager (ztunnel/inpod), and answers
// every connection with a line that says which listener took it. Outbound, it also connects to
// the original destination from the pod's namespace, as ztunnel would, and appends that peer's
// answer: the connection is only let through (not captured again into the peer itself) because
// the agent exempted the peer's cgroup, so the answer proves the exemption.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/ambient-mesh/ambient/redirect"
	"github.com/ambient-mesh/ambient/redirect/zds"
	"github.com/ambient-mesh/ambient/ztunnel/inpod"
)

// ZDSPeerConfig configures the peer.
type ZDSPeerConfig struct {
	Socket string // the agent's ZDS socket
	PinDir string // the redirector's pins
	Node   string
}

type zdsPeer struct {
	pinned *redirect.Pinned
}

// RunZDSPeer serves until ctx ends; cancellation returns nil.
func RunZDSPeer(ctx context.Context, cfg ZDSPeerConfig, log *slog.Logger) error {
	pinned, err := redirect.WaitPinned(ctx, cfg.PinDir, log)
	if err != nil {
		return nil // ctx ended while waiting for the agent
	}
	defer pinned.Close()
	m := inpod.New(inpod.Config{Registrar: pinned, Handler: &zdsPeer{pinned: pinned}, Log: log, Drain: 2 * time.Second})
	defer m.Close()
	zc := zds.DefaultClientConfig()
	zc.Path, zc.Node, zc.Log, zc.Handler = cfg.Socket, cfg.Node, log, m
	return zds.RunClient(ctx, zc)
}

func (p *zdsPeer) Outbound(ctx context.Context, pod *inpod.Pod, c net.Conn) {
	line := p.line("outbound", pod, c)
	peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	orig, err := p.pinned.LookupOrigDst(netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()))
	if err != nil {
		line += " orig=none"
	} else {
		line += " orig=" + orig.String() + " | " + onward(ctx, pod, orig)
	}
	answer(c, line)
}

func (p *zdsPeer) Inbound(_ context.Context, pod *inpod.Pod, c net.Conn) {
	answer(c, p.line("inbound", pod, c))
}

func (p *zdsPeer) HBONE(_ context.Context, pod *inpod.Pod, c net.Conn) {
	answer(c, p.line("hbone", pod, c))
}

func (p *zdsPeer) line(kind string, pod *inpod.Pod, c net.Conn) string {
	return fmt.Sprintf("zdspeer %s pod=%s dst=%s", kind, pod.Key(), c.LocalAddr())
}

// answer writes the line once the client has finished sending.
func answer(c net.Conn, line string) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, c)
	_, _ = io.WriteString(c, line+"\n")
}

// onward connects to dst from the pod's namespace, sends a line, and returns the first line of
// the answer (or the error).
func onward(ctx context.Context, pod *inpod.Pod, dst netip.AddrPort) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := pod.Dial(ctx, dst)
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
