package ambientctl

// `ambientctl status`: the mesh at a glance. Gather reads the cluster through the API server
// only: objects with the client, and the components' own summaries (api/status) through the pod
// proxy, so it works on any cluster without port-forwarding. Every problem it finds carries the
// object, the cause and a hint of what to do, as `linkerd check` gives them; a report with any
// problem makes the command exit non-zero. Gather never fails on what it finds broken: that is
// what it reports.

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/api/status"
)

// The installation's names (deploy/).
const (
	SystemNamespace = "istio-system"
	istiodName      = "istiod-lite"
	istiodLease     = "istiod-lite-leader"
	ztunnelApp      = "ztunnel"
	agentApp        = "ambient-agent"
	// gatewayNameLabel marks the Deployment of a waypoint with its Gateway's name.
	gatewayNameLabel = "gateway.networking.k8s.io/gateway-name"
)

// rootWarning is how close to its expiry the CA root is reported as a problem.
const rootWarning = 30 * 24 * time.Hour

// Report is what `ambientctl status` shows; its JSON and YAML shapes are part of the CLI's
// contract (golden tests).
type Report struct {
	ControlPlane ControlPlane `json:"controlPlane"`
	Nodes        []Node       `json:"nodes"`
	Namespaces   []string     `json:"enrolledNamespaces"`
	Workloads    []Workload   `json:"workloads"`
	Waypoints    []Waypoint   `json:"waypoints"`
	Problems     []Problem    `json:"problems"`
}

// ControlPlane is istiod-lite.
type ControlPlane struct {
	Installed    bool      `json:"installed"`
	Replicas     int32     `json:"replicas"`
	Ready        int32     `json:"ready"`
	Leader       string    `json:"leader,omitempty"`
	Version      string    `json:"version,omitempty"`
	Proxies      int       `json:"proxies"`
	UpToDate     int       `json:"proxiesUpToDate"`
	RootNotAfter time.Time `json:"rootNotAfter,omitzero"`
}

// Node is one node's data plane.
type Node struct {
	Name            string    `json:"name"`
	Ztunnel         string    `json:"ztunnel"` // ready, not ready, missing
	ZtunnelVersion  string    `json:"ztunnelVersion,omitempty"`
	Workloads       int       `json:"workloads"`
	Certificates    int       `json:"certificates"`
	EarliestExpiry  time.Time `json:"earliestExpiry,omitzero"`
	ConfigConnected bool      `json:"configConnected"`
	Agent           string    `json:"agent"` // ready, not ready, missing
}

// Workload is a pod of an enrolled namespace.
type Workload struct {
	Namespace   string `json:"namespace"`
	Name        string `json:"name"`
	Node        string `json:"node"`
	Redirection string `json:"redirection"` // enabled, pending, none
}

// Waypoint is a Gateway of class istio-waypoint.
type Waypoint struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Ready     bool   `json:"ready"`
}

// Problem is something wrong, with what to do about it.
type Problem struct {
	Object string `json:"object"`
	Cause  string `json:"cause"`
	Hint   string `json:"hint"`
}

// ProxyGet fetches path from port of a pod through the API server.
type ProxyGet func(ctx context.Context, namespace, pod string, port int, path string) ([]byte, error)

// PodProxy is ProxyGet through the API server's pod proxy.
func PodProxy(cs kubernetes.Interface) ProxyGet {
	return func(ctx context.Context, ns, pod string, port int, path string) ([]byte, error) {
		return cs.CoreV1().Pods(ns).ProxyGet("http", pod, strconv.Itoa(port), path, nil).DoRaw(ctx)
	}
}

// Gather builds the report. An error means the cluster could not be read at all.
func Gather(ctx context.Context, cs kubernetes.Interface, get ProxyGet, now time.Time) (*Report, error) {
	r := &Report{Nodes: []Node{}, Namespaces: []string{}, Workloads: []Workload{}, Waypoints: []Waypoint{}, Problems: []Problem{}}
	if err := r.controlPlane(ctx, cs, get, now); err != nil {
		return nil, err
	}
	if err := r.nodes(ctx, cs, get); err != nil {
		return nil, err
	}
	if err := r.workloads(ctx, cs); err != nil {
		return nil, err
	}
	if err := r.waypoints(ctx, cs); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Report) problem(object, cause, hint string) {
	r.Problems = append(r.Problems, Problem{Object: object, Cause: cause, Hint: hint})
}

func (r *Report) controlPlane(ctx context.Context, cs kubernetes.Interface, get ProxyGet, now time.Time) error {
	d, err := cs.AppsV1().Deployments(SystemNamespace).Get(ctx, istiodName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		r.problem("deployment/"+istiodName, "istiod-lite is not installed in "+SystemNamespace,
			"install the mesh: kubectl apply --server-side -k deploy/ (or helm install ambient deploy/charts/ambient -n istio-system --create-namespace)")
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the control plane: %w", err)
	}
	cp := &r.ControlPlane
	cp.Installed, cp.Ready = true, d.Status.ReadyReplicas
	cp.Replicas = 1
	if d.Spec.Replicas != nil {
		cp.Replicas = *d.Spec.Replicas
	}
	if cp.Ready == 0 {
		r.problem("deployment/"+istiodName, "istiod-lite has no ready replica: proxies keep their last configuration, but no change reaches them and no certificate is issued or renewed",
			"kubectl -n istio-system describe deployment istiod-lite; kubectl -n istio-system logs deployment/istiod-lite")
	} else if cp.Ready < cp.Replicas {
		r.problem("deployment/"+istiodName, fmt.Sprintf("only %d of %d istiod-lite replicas are ready", cp.Ready, cp.Replicas),
			"kubectl -n istio-system get pods -l app=istiod-lite")
	}
	if l, err := cs.CoordinationV1().Leases(SystemNamespace).Get(ctx, istiodLease, metav1.GetOptions{}); err == nil && l.Spec.HolderIdentity != nil {
		cp.Leader = *l.Spec.HolderIdentity
	}
	pods, err := cs.CoreV1().Pods(SystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + istiodName})
	if err != nil {
		return fmt.Errorf("list istiod-lite pods: %w", err)
	}
	seen := map[string]bool{}
	for _, p := range pods.Items {
		if !podReady(&p) {
			continue
		}
		var st status.Istiod
		if err := fetchFrom(ctx, get, &p, status.Path, &st); err != nil {
			r.problem("pod/"+p.Name, "istiod-lite's status could not be read: "+err.Error(),
				"check that the pod serves port "+strconv.Itoa(mesh.PortMetrics)+" and that you may use pods/proxy in "+SystemNamespace)
			continue
		}
		cp.Version = cmp.Or(cp.Version, st.Version)
		if cp.RootNotAfter.IsZero() || st.RootNotAfter.Before(cp.RootNotAfter) {
			cp.RootNotAfter = st.RootNotAfter
		}
		for _, px := range st.Proxies {
			cp.Proxies++
			if px.UpToDate {
				cp.UpToDate++
			} else if px.LastNACK != "" {
				r.problem("proxy/"+px.ID, "rejected its last configuration: "+px.LastNACK,
					"kubectl -n istio-system logs "+p.Name+"; the proxy keeps its last good configuration")
			}
		}
		for _, pr := range st.Problems {
			key := pr.Kind + "/" + pr.Namespace + "/" + pr.Name + pr.Message
			if seen[key] {
				continue
			}
			seen[key] = true
			obj := strings.ToLower(pr.Kind) + "/" + pr.Name
			if pr.Namespace != "" {
				obj = pr.Namespace + "/" + obj
			}
			r.problem(obj, pr.Message, fmt.Sprintf("kubectl describe %s -n %s (reason %s)", strings.ToLower(pr.Kind), cmp.Or(pr.Namespace, "default"), pr.Reason))
		}
	}
	if !cp.RootNotAfter.IsZero() && cp.RootNotAfter.Sub(now) < rootWarning {
		left := cp.RootNotAfter.Sub(now).Round(time.Hour)
		r.problem("secret/istio-ca-secret", fmt.Sprintf("the CA root certificate expires %s (in %s): workloads stop trusting each other then",
			cp.RootNotAfter.UTC().Format(time.RFC3339), left),
			"rotate the root: put the new CA in the cacerts Secret of istio-system; istiod-lite serves old and new roots during the change")
	}
	return nil
}

func (r *Report) nodes(ctx context.Context, cs kubernetes.Interface, get ProxyGet) error {
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	byNode := func(app string) (map[string]*corev1.Pod, error) {
		pods, err := cs.CoreV1().Pods(SystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return nil, fmt.Errorf("list %s pods: %w", app, err)
		}
		out := map[string]*corev1.Pod{}
		for i := range pods.Items {
			p := &pods.Items[i]
			// A ready pod wins over one that is leaving (a rolling update holds two).
			if cur, ok := out[p.Spec.NodeName]; !ok || (!podReady(cur) && podReady(p)) {
				out[p.Spec.NodeName] = p
			}
		}
		return out, nil
	}
	zts, err := byNode(ztunnelApp)
	if err != nil {
		return err
	}
	agents, err := byNode(agentApp)
	if err != nil {
		return err
	}
	for _, n := range nodes.Items {
		node := Node{Name: n.Name, Ztunnel: podState(zts[n.Name]), Agent: podState(agents[n.Name])}
		switch node.Agent {
		case "missing":
			r.problem("node/"+n.Name, "no node agent runs on this node: new pods are not redirected and their traffic bypasses the mesh",
				"kubectl -n istio-system describe daemonset ambient-agent (a nodeSelector, taint or failed scheduling?)")
		case "not ready":
			r.problem("pod/"+agents[n.Name].Name, "the node agent on "+n.Name+" is not ready: its eBPF programs may not be attached",
				"kubectl -n istio-system logs "+agents[n.Name].Name)
		}
		switch node.Ztunnel {
		case "missing":
			r.problem("node/"+n.Name, "no ztunnel runs on this node: connections of its enrolled pods are refused (nothing bypasses policy)",
				"kubectl -n istio-system describe daemonset ztunnel (a nodeSelector, taint or failed scheduling?)")
		case "not ready":
			r.problem("pod/"+zts[n.Name].Name, "ztunnel on "+n.Name+" is not ready: it has not synced its configuration or its pods",
				"kubectl -n istio-system logs "+zts[n.Name].Name)
		case "ready":
			r.ztunnel(ctx, get, zts[n.Name], &node)
		}
		r.Nodes = append(r.Nodes, node)
	}
	return nil
}

func (r *Report) ztunnel(ctx context.Context, get ProxyGet, p *corev1.Pod, node *Node) {
	var st status.Ztunnel
	if err := fetchFrom(ctx, get, p, status.Path, &st); err != nil {
		r.problem("pod/"+p.Name, "ztunnel's status could not be read: "+err.Error(),
			"check that you may use pods/proxy in "+SystemNamespace)
		return
	}
	node.ZtunnelVersion, node.Workloads, node.Certificates = st.Version, len(st.Pods), len(st.Certificates)
	node.ConfigConnected = st.XDS.Connected
	if !st.XDS.Connected {
		r.problem("pod/"+p.Name, "ztunnel on "+node.Name+" is not connected to istiod-lite: it serves its last configuration, and certificates are not renewed",
			"kubectl -n istio-system get pods -l app=istiod-lite; kubectl -n istio-system logs "+p.Name)
	}
	for _, c := range st.Certificates {
		if node.EarliestExpiry.IsZero() || (!c.NotAfter.IsZero() && c.NotAfter.Before(node.EarliestExpiry)) {
			node.EarliestExpiry = c.NotAfter
		}
		if c.State != "valid" {
			r.problem("pod/"+p.Name, fmt.Sprintf("the certificate of %s is %s: %s", c.Identity, c.State, cmp.Or(c.LastError, "not issued yet")),
				"kubectl -n istio-system logs deployment/istiod-lite (the CA) and "+p.Name)
		}
	}
}

func (r *Report) workloads(ctx context.Context, cs kubernetes.Interface) error {
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{LabelSelector: mesh.LabelDataplaneMode + "=" + mesh.DataplaneModeAmbient})
	if err != nil {
		return fmt.Errorf("list namespaces: %w", err)
	}
	for _, ns := range nss.Items {
		r.Namespaces = append(r.Namespaces, ns.Name)
		pods, err := cs.CoreV1().Pods(ns.Name).List(ctx, metav1.ListOptions{})
		if err != nil {
			return fmt.Errorf("list pods of %s: %w", ns.Name, err)
		}
		for _, p := range pods.Items {
			if p.Spec.HostNetwork || p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil ||
				p.Labels[mesh.LabelDataplaneMode] == mesh.DataplaneModeNone {
				continue
			}
			w := Workload{Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName, Redirection: cmp.Or(p.Annotations[mesh.AnnotationRedirection], "none")}
			r.Workloads = append(r.Workloads, w)
			if w.Redirection != mesh.RedirectionEnabled {
				cause := "not redirected yet: its traffic does not go through the mesh"
				if ev := lastWarning(ctx, cs, &p); ev != "" {
					cause += " (" + ev + ")"
				}
				r.problem(p.Namespace+"/pod/"+p.Name, cause,
					"kubectl -n "+p.Namespace+" describe pod "+p.Name+"; kubectl -n istio-system logs -l app=ambient-agent --tail=50")
			}
		}
	}
	slices.SortFunc(r.Workloads, func(a, b Workload) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return nil
}

// waypoints lists the waypoint Deployments istiod-lite made for Gateways of class
// istio-waypoint (labelled with their Gateway's name, as Istio labels them).
func (r *Report) waypoints(ctx context.Context, cs kubernetes.Interface) error {
	ds, err := cs.AppsV1().Deployments("").List(ctx, metav1.ListOptions{LabelSelector: gatewayNameLabel})
	if err != nil {
		return fmt.Errorf("list waypoints: %w", err)
	}
	for i := range ds.Items {
		d := &ds.Items[i]
		w := Waypoint{Namespace: d.Namespace, Name: d.Labels[gatewayNameLabel], Ready: deploymentReady(d)}
		r.Waypoints = append(r.Waypoints, w)
		if !w.Ready {
			r.problem(d.Namespace+"/gateway/"+w.Name, "the waypoint has no ready replica: traffic to what is bound to it is refused",
				"kubectl -n "+d.Namespace+" describe deployment "+d.Name)
		}
	}
	slices.SortFunc(r.Waypoints, func(a, b Waypoint) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return nil
}

// lastWarning is the newest Warning Event of a pod, "reason: message".
func lastWarning(ctx context.Context, cs kubernetes.Interface, p *corev1.Pod) string {
	evs, err := cs.CoreV1().Events(p.Namespace).List(ctx, metav1.ListOptions{
		FieldSelector: "involvedObject.name=" + p.Name + ",involvedObject.kind=Pod,type=Warning"})
	if err != nil || len(evs.Items) == 0 {
		return ""
	}
	last := slices.MaxFunc(evs.Items, func(a, b corev1.Event) int { return a.LastTimestamp.Compare(b.LastTimestamp.Time) })
	return last.Reason + ": " + last.Message
}

// fetchTimeout bounds one read through the pod proxy: a pod whose network is gone (it is
// stopping) would otherwise hold the command until its own deadline.
const fetchTimeout = 5 * time.Second

// jsonUnmarshal decodes a component's document, saying what it got when it is not JSON (a
// proxy error page, say).
func jsonUnmarshal(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("not a status document (%w): %.200s", err, b)
	}
	return nil
}

func podState(p *corev1.Pod) string {
	switch {
	case p == nil:
		return "missing"
	case podReady(p):
		return "ready"
	default:
		return "not ready"
	}
}

// podReady reports whether p is ready and not on its way out.
func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// deploymentReady reports whether d has all its replicas ready.
func deploymentReady(d *appsv1.Deployment) bool {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	return d.Status.ReadyReplicas >= want
}
