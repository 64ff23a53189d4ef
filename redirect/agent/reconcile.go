package agent

// Enrolment of one pod. The order of the steps is what keeps a pod's traffic from ever taking
// a path around the proxy while it changes hands:
//   in:  ztunnel first (it opens and registers its listeners in the pod's namespace), then the
//        kernel (outbound capture, then the inbound hooks): from the first captured connection
//        on, a listener is there;
//   out: the kernel first (traffic goes direct again), then ztunnel (it drains).
// A pod that should be in the mesh is enrolled in the kernel even when ztunnel cannot take it:
// its connections are then refused (fail closed), and it is annotated pending until ztunnel acks.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/ambient-mesh/ambient/api/mesh"
	zdsv1 "github.com/ambient-mesh/ambient/api/zds/v1"
	"github.com/ambient-mesh/ambient/redirect"
	"github.com/ambient-mesh/ambient/redirect/zds"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// podState is what the agent has set up for one pod.
type podState struct {
	key   string // namespace/name
	uid   types.UID
	netns uint64 // cookie
	// acked: ztunnel holds the workload; retry: the setup did not finish (ztunnel refused the
	// pod, or a kernel step failed) and must run again. Both are guarded by Agent.mu: ztunnel's
	// replay acks arrive on another goroutine.
	acked, retry bool
	// nsPath is the sandbox's namespace path from the CNI plugin, reusable on a retry; empty
	// when the namespace was found through /proc (a retry looks again: a PID can be reused).
	nsPath string
	// containerID is the sandbox the CNI plugin set up, so that a late DEL of an earlier
	// sandbox of the same pod does not take the new one out.
	containerID string
}

// reconcile brings one pod (by namespace/name) to what the rules want.
func (a *Agent) reconcile(ctx context.Context, key string) error {
	unlock := a.locks.lock(key)
	defer unlock()
	ns, name, _ := splitKey(key)
	pod, err := a.podLister.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return a.teardownKey(ctx, key, "")
	}
	if err != nil {
		return err
	}
	st := a.state(key)
	if st != nil && st.uid != pod.UID { // the name now belongs to a new pod
		if err := a.teardown(ctx, st); err != nil {
			return err
		}
		st = nil
	}
	d := Wanted(a.namespace(ns), pod)
	if !d.Enrol || finished(pod) {
		if st != nil {
			if err := a.teardown(ctx, st); err != nil {
				return err
			}
		}
		a.clearWant(key)
		return a.annotate(ctx, pod, "")
	}
	since := a.wantSince(key)
	if st == nil || a.needsRetry(st) {
		if pod.Status.PodIP == "" && st == nil {
			return nil // not started: the CNI plugin, or the update that brings the IP, sets it up
		}
		if st != nil && st.nsPath != "" {
			st, err = a.setup(ctx, pod, st.nsPath, st.containerID, podIPs(pod))
		} else {
			f, ferr := a.openNetns(pod.UID)
			if ferr != nil {
				a.pending(ctx, pod, "NetnsNotFound", "no running process of the pod found to take its network namespace from: "+ferr.Error())
				return ferr
			}
			st, err = a.setup(ctx, pod, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), "", podIPs(pod))
			f.Close()
			if st != nil {
				a.mu.Lock()
				st.nsPath = "" // the fd path dies with f: a retry looks again
				a.mu.Unlock()
			}
		}
		if err != nil && !errors.Is(err, zds.ErrNoProxy) {
			return err
		}
	}
	if !a.isAcked(st) {
		if pod.Annotations[mesh.AnnotationRedirection] == mesh.RedirectionEnabled {
			// Set up before: the kernel side is in place, and ztunnel gets the pod in its
			// replay when it (re)connects. A ztunnel that is away is ztunnel's state to report,
			// not a change of every pod's; an agent restart must change nothing.
			return nil
		}
		a.pending(ctx, pod, "ZtunnelNotConnected", "ztunnel is not connected to the node agent on "+a.cfg.Node+
			": the pod's connections are refused (never bypassed) until it takes the pod")
		return nil // its replay ack requeues the pod
	}
	if err := a.annotate(ctx, pod, mesh.RedirectionEnabled); err != nil {
		return err
	}
	if !since.IsZero() {
		a.m.onboard.Observe(time.Since(since).Seconds())
		a.clearWant(key)
	}
	return nil
}

// setup enrols the pod whose network namespace is at nsPath: ztunnel, then the kernel. It
// records the state even when ztunnel could not take the pod (zds.ErrNoProxy or an ack error),
// since the kernel side is in place; the error says why the pod is not served.
func (a *Agent) setup(ctx context.Context, pod *corev1.Pod, nsPath, containerID string, ips []netip.Addr) (*podState, error) {
	key := pod.Namespace + "/" + pod.Name
	f, err := os.Open(nsPath)
	if err != nil {
		a.m.errors.WithLabelValues("netns").Inc()
		return nil, fmt.Errorf("open network namespace %s: %w", nsPath, err)
	}
	defer f.Close()
	cookie, err := a.cookieOf(nsPath)
	if err != nil {
		a.m.errors.WithLabelValues("netns").Inc()
		return nil, err
	}
	if old := a.state(key); old != nil && old.netns != cookie {
		if err := a.teardown(ctx, old); err != nil { // a new sandbox for the same pod
			return nil, err
		}
	}
	if len(ips) == 0 {
		a.m.errors.WithLabelValues("addresses").Inc()
		return nil, errors.New("the pod has no IP address")
	}
	// Recorded before anything is done: a failure past this point leaves a state that teardown
	// undoes (ztunnel's record included) and that a retry finishes, and ztunnel's replay ack,
	// which can come before Add returns, finds it.
	st := &podState{key: key, uid: pod.UID, netns: cookie, nsPath: nsPath, containerID: containerID, retry: true}
	a.setState(st)
	info := &zdsv1.WorkloadInfo{Uid: string(pod.UID), Name: pod.Name, Namespace: pod.Namespace,
		ServiceAccount: pod.Spec.ServiceAccountName, Node: a.cfg.Node}
	for _, ip := range ips {
		info.Ips = append(info.Ips, ip.String())
	}
	done := a.m.step("ztunnel")
	zerr := a.zds.Add(ctx, zds.Workload{Info: info, NetnsCookie: cookie, Netns: f})
	done()
	if zerr == nil {
		a.mu.Lock()
		st.acked = true
		a.mu.Unlock()
	} else if !errors.Is(zerr, zds.ErrNoProxy) {
		a.m.errors.WithLabelValues("ztunnel").Inc()
		a.pending(ctx, pod, "ZtunnelRefused", "ztunnel did not take the pod: "+zerr.Error())
	}
	rp := redirect.Pod{NetNS: cookie, IPs: ips, ProbePorts: probePorts(pod), ProbeSources: a.probeSources(ips)}
	done = a.m.step("enrol")
	err = a.dp.Enrol(rp)
	done()
	if err != nil {
		a.m.errors.WithLabelValues("enrol").Inc()
		return st, err
	}
	done = a.m.step("attach")
	_, err = a.dp.AttachSKLookup(nsPath)
	done()
	if err != nil {
		a.m.errors.WithLabelValues("attach").Inc()
		// Outbound capture is on and inbound is not: keep the pod enrolled (fail closed for
		// what is captured) and say so; the retry attaches.
		a.pending(ctx, pod, "InboundHooksFailed", "attaching the inbound hooks failed: "+err.Error())
		return st, err
	}
	a.mu.Lock()
	st.retry = zerr != nil && !errors.Is(zerr, zds.ErrNoProxy)
	a.mu.Unlock()
	return st, zerr
}

// openNetns opens a running pod's network namespace, found in /proc, and checks after opening
// that the process still belongs to the pod: a PID can end and be reused between the scan and
// the open, and the namespace of another pod (or the node's) must never be taken for this one's.
func (a *Agent) openNetns(uid types.UID) (*os.File, error) {
	defer a.m.step("netns")()
	path, err := a.procs.netnsPath(string(uid))
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	cg, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(path)), "cgroup"))
	if err != nil || !slices.Contains(podUIDs(cg), string(uid)) {
		f.Close()
		return nil, fmt.Errorf("pod uid %s: the process found has changed: %w", uid, errNoProcess)
	}
	return f, nil
}

func (a *Agent) needsRetry(st *podState) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return st.retry
}

func (a *Agent) isAcked(st *podState) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return st.acked
}

// teardown takes the pod out: the kernel first, then ztunnel.
func (a *Agent) teardown(ctx context.Context, st *podState) error {
	if err := errors.Join(a.dp.DetachSKLookup(st.netns), a.dp.Unenrol(st.netns)); err != nil {
		a.m.errors.WithLabelValues("unenrol").Inc()
		return err
	}
	if err := a.zds.Del(ctx, string(st.uid)); err != nil && !errors.Is(err, zds.ErrNoProxy) {
		// The kernel no longer sends the pod's traffic to ztunnel; a ztunnel that missed the
		// delete drops the workload at its next replay.
		a.log.Warn("ztunnel did not confirm removal", "pod", st.key, "err", err)
	}
	a.dropState(st.key)
	return nil
}

// teardownKey is teardown for a pod known only by key (deleted), optionally only for uid.
func (a *Agent) teardownKey(ctx context.Context, key string, uid types.UID) error {
	st := a.state(key)
	a.clearWant(key)
	if st == nil || (uid != "" && st.uid != uid) {
		return nil
	}
	return a.teardown(ctx, st)
}

// annotate sets (or, with value "", removes) the redirection annotation.
func (a *Agent) annotate(ctx context.Context, pod *corev1.Pod, value string) error {
	cur, has := pod.Annotations[mesh.AnnotationRedirection]
	if (value == "" && !has) || (value != "" && cur == value) {
		return nil
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:null}}}`, mesh.AnnotationRedirection)
	if value != "" {
		patch = fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, mesh.AnnotationRedirection, value)
	}
	done := a.m.step("annotate")
	_, err := a.cs.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, []byte(patch), metav1PatchOptions)
	done()
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("annotate pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// pending marks the pod pending with an Event that says why.
func (a *Agent) pending(ctx context.Context, pod *corev1.Pod, reason, msg string) {
	a.log.Warn("pod redirection pending", "pod", pod.Namespace+"/"+pod.Name, "reason", reason, "detail", msg)
	a.events.Event(pod, corev1.EventTypeWarning, reason, msg)
	if err := a.annotate(ctx, pod, mesh.RedirectionPending); err != nil {
		a.log.Warn("annotate pending", "pod", pod.Namespace+"/"+pod.Name, "err", err)
	}
}

func podIPs(pod *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	if len(out) == 0 {
		if a, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return oneIPPerFamily(out)
}

// oneIPPerFamily keeps the first address of each family: what the programs hold per pod.
func oneIPPerFamily(ips []netip.Addr) []netip.Addr {
	var out []netip.Addr
	var v4, v6 bool
	for _, ip := range ips {
		if ip.Is4() && !v4 {
			v4 = true
			out = append(out, ip)
		} else if ip.Is6() && !v6 {
			v6 = true
			out = append(out, ip)
		}
	}
	return out
}

// probePorts are the ports kubelet probes reach the pod's containers on.
func probePorts(pod *corev1.Pod) []uint16 {
	var out []uint16
	for _, c := range append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...) {
		for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
			if p == nil {
				continue
			}
			var port intstr.IntOrString
			switch {
			case p.HTTPGet != nil:
				port = p.HTTPGet.Port
			case p.TCPSocket != nil:
				port = p.TCPSocket.Port
			case p.GRPC != nil:
				port = intstr.FromInt32(p.GRPC.Port)
			default:
				continue
			}
			if n := resolvePort(c, port); n > 0 && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	slices.Sort(out)
	return out
}

func resolvePort(c corev1.Container, p intstr.IntOrString) uint16 {
	if p.Type == intstr.Int {
		if p.IntVal > 0 && p.IntVal < 65536 {
			return uint16(p.IntVal)
		}
		return 0
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return uint16(cp.ContainerPort)
		}
	}
	return 0
}

// probeSources are the node's addresses towards the pod: where kubelet's probes come from. The
// agent runs in the node's network namespace, so a connected UDP socket (no packet is sent)
// tells which source address the node uses for each pod address.
func (a *Agent) probeSources(ips []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 9)))
		if err != nil {
			continue
		}
		src := c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
		c.Close()
		if !slices.Contains(out, src) {
			out = append(out, src)
		}
	}
	return out
}
