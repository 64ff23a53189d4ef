// Package waypoint deploys waypoint proxies: for each Gateway of class istio-waypoint it keeps a
// ServiceAccount, Deployment and Service, owned by the Gateway so that deleting the Gateway removes
// them, and writes the Gateway's status. Only the elected leader runs it. It does not decide which
// traffic goes through a waypoint (model does).
package waypoint

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	"sigs.k8s.io/yaml"

	"github.com/ambient-mesh/ambient/api/mesh"
)

// GatewayNameLabel names, on each object of a waypoint, the Gateway it belongs to.
const GatewayNameLabel = "gateway.networking.k8s.io/gateway-name"

// TokenDir is where a waypoint pod finds its token for istiod-lite (file istio-token, audience
// mesh.TokenAudience), as ztunnel does.
const TokenDir = "/var/run/secrets/tokens"

// RootCertDir is where a waypoint pod finds the mesh's root certificate (root-cert.pem), from
// the ConfigMap istiod-lite publishes in every namespace.
const (
	RootCertDir   = "/var/run/secrets/istio"
	RootConfigMap = "istio-ca-root-cert"
)

// Proxy is how istiod-lite runs waypoints: the image and the mesh-wide settings each waypoint
// gets on its command line.
type Proxy struct {
	Image string
	// TracingEndpoint is the OpenTelemetry collector (host:port, OTLP/gRPC) waypoints send
	// request spans to; empty for none. TracingSampling is the percentage of requests without a
	// sampled trace that start one.
	TracingEndpoint string
	TracingSampling float64
}

// args are the waypoint's command line for Gateway g.
func (p Proxy) args(g *gwv1.Gateway) []string {
	args := []string{"--gateway=" + g.Namespace + "/" + g.Name}
	if p.TracingEndpoint != "" {
		args = append(args, "--tracing-endpoint="+p.TracingEndpoint,
			"--tracing-sampling="+strconv.FormatFloat(p.TracingSampling, 'f', -1, 64))
	}
	return args
}

// DefaultConcurrency is how many cores a waypoint runs on (GOMAXPROCS) unless its Gateway's
// proxy.istio.io/config says otherwise. One, as Linkerd's proxy: a waypoint is a Deployment
// that scales out by replicas, and a runtime scheduling on one core does not spin up a second
// thread to hand each request to. At 1000 requests/s of 1 KiB that costs 15% less CPU than two
// cores (BenchmarkWaypoint, run both ways), and one core carries some 3000 such requests/s.
const DefaultConcurrency = 1

// Concurrency is the number of cores the waypoint of g runs on, from the concurrency of the
// ProxyConfig in its proxy.istio.io/config annotation: 0 means every core its cgroup allows
// (Istio's meaning); absent, DefaultConcurrency. As in Istio (protojson), the number may be
// quoted. A value that cannot be read gives DefaultConcurrency and an error; the reconciler then
// keeps what the waypoint runs with.
func Concurrency(g *gwv1.Gateway) (int, error) {
	raw, ok := g.Annotations[mesh.AnnotationProxyConfig]
	if !ok {
		return DefaultConcurrency, nil
	}
	var pc struct {
		Concurrency *int32OrString `json:"concurrency"`
	}
	if err := yaml.Unmarshal([]byte(raw), &pc); err != nil {
		return DefaultConcurrency, fmt.Errorf("%s: %w", mesh.AnnotationProxyConfig, err)
	}
	switch {
	case pc.Concurrency == nil:
		return DefaultConcurrency, nil
	case *pc.Concurrency < 0:
		return DefaultConcurrency, fmt.Errorf("%s: concurrency %d is negative", mesh.AnnotationProxyConfig, *pc.Concurrency)
	}
	return int(*pc.Concurrency), nil
}

// int32OrString is an int32 that JSON may also give as a string, as protojson reads an
// Int32Value.
type int32OrString int32

func (n *int32OrString) UnmarshalJSON(b []byte) error {
	s := string(b)
	if uq, err := strconv.Unquote(s); err == nil {
		s = uq
	}
	v, err := strconv.ParseInt(s, 10, 32)
	if err != nil {
		return fmt.Errorf("concurrency %s is not a whole number", b)
	}
	*n = int32OrString(v)
	return nil
}

// Reconciler keeps waypoint deployments in line with their Gateways.
type Reconciler struct {
	kube          kubernetes.Interface
	gw            gwclient.Interface
	proxy         Proxy
	clusterDomain string
	// done maps a Gateway's UID to what was last reconciled of it, so unchanged Gateways cost no
	// API calls on later passes. A new leader starts with an empty map and checks everything, and
	// it is forgotten every Resync so that objects changed or deleted by hand are repaired.
	done      map[types.UID]reconciled
	repair    map[string]bool // "<namespace>/<name>" of Gateways to check at the next pass
	checkedAt time.Time
	now       func() time.Time
}

// reconciled is what a waypoint's objects were made from: the Gateway's generation and its
// proxy.istio.io/config annotation (annotations do not move the generation).
type reconciled struct {
	generation  int64
	proxyConfig string
}

// Resync is how often every waypoint is checked against the API server even if its Gateway did
// not change.
const Resync = 5 * time.Minute

// New returns a reconciler that deploys waypoints as p says.
func New(kube kubernetes.Interface, gw gwclient.Interface, p Proxy, clusterDomain string) *Reconciler {
	return &Reconciler{kube: kube, gw: gw, proxy: p, clusterDomain: clusterDomain,
		done: map[types.UID]reconciled{}, repair: map[string]bool{}, now: time.Now}
}

// Repair makes the next Reconcile check the objects of the named waypoint Gateways
// ("<namespace>/<name>") against the API server even if the Gateways did not change: one of their
// objects was changed or deleted by someone else.
func (r *Reconciler) Repair(gateways ...string) {
	for _, g := range gateways {
		r.repair[g] = true
	}
}

// Reset forgets what was reconciled (on losing leadership).
func (r *Reconciler) Reset() { clear(r.done) }

// Reconcile brings every waypoint Gateway's objects and status up to date; it carries on past a
// failing Gateway and returns every error.
func (r *Reconciler) Reconcile(ctx context.Context, gateways []*gwv1.Gateway) error {
	if now := r.now(); now.Sub(r.checkedAt) > Resync {
		r.Reset()
		r.checkedAt = now
	}
	var errs []error
	for _, g := range gateways {
		if string(g.Spec.GatewayClassName) != mesh.WaypointGatewayClass || g.DeletionTimestamp != nil {
			continue
		}
		key := g.Namespace + "/" + g.Name
		made := reconciled{g.Generation, g.Annotations[mesh.AnnotationProxyConfig]}
		if prev, ok := r.done[g.UID]; ok && prev == made && !r.repair[key] {
			continue
		}
		if err := r.reconcile(ctx, g); err != nil {
			errs = append(errs, fmt.Errorf("waypoint %s/%s: %w", g.Namespace, g.Name, err))
			continue
		}
		r.done[g.UID] = made
	}
	clear(r.repair) // attempted; a failure is retried anyway (not in done)
	return errors.Join(errs...)
}

func (r *Reconciler) reconcile(ctx context.Context, g *gwv1.Gateway) error {
	listener, ok := hboneListener(g)
	if !ok {
		return r.writeStatus(ctx, g, metav1.ConditionFalse, string(gwv1.GatewayReasonListenersNotValid),
			fmt.Sprintf("a waypoint needs a listener {name: %s, port: %d, protocol: %s}", mesh.WaypointListenerName, mesh.PortHBONE, mesh.WaypointListenerProtocolHB))
	}
	sa, dep, svc := Desired(g, r.proxy, listener)
	msg := "waypoint deployed"
	if _, err := Concurrency(g); err != nil {
		msg += fmt.Sprintf("; ignored %v; %s", err, r.keepProcs(ctx, dep))
	}
	if err := apply(ctx, r.kube.CoreV1().ServiceAccounts(g.Namespace), sa, func(cur, want *corev1.ServiceAccount) bool {
		return equality.Semantic.DeepEqual(cur.Labels, want.Labels)
	}); err != nil {
		return err
	}
	if err := apply(ctx, r.kube.AppsV1().Deployments(g.Namespace), dep, func(cur, want *appsv1.Deployment) bool {
		return equality.Semantic.DeepDerivative(want.Spec, cur.Spec) && equality.Semantic.DeepEqual(cur.Labels, want.Labels) &&
			sameCommandLines(cur.Spec.Template.Spec.Containers, want.Spec.Template.Spec.Containers)
	}); err != nil {
		return err
	}
	if err := apply(ctx, r.kube.CoreV1().Services(g.Namespace), svc, func(cur, want *corev1.Service) bool {
		return equality.Semantic.DeepDerivative(want.Spec, cur.Spec) && equality.Semantic.DeepEqual(cur.Labels, want.Labels)
	}); err != nil {
		return err
	}
	return r.writeStatus(ctx, g, metav1.ConditionTrue, string(gwv1.GatewayReasonProgrammed), msg)
}

// keepProcs sets dep's GOMAXPROCS to that of the Deployment running, when the Gateway's own
// cannot be read: a typo must not change how many cores a waypoint runs on. It says what it kept.
func (r *Reconciler) keepProcs(ctx context.Context, dep *appsv1.Deployment) string {
	cur, err := r.kube.AppsV1().Deployments(dep.Namespace).Get(ctx, dep.Name, metav1.GetOptions{})
	if err != nil || len(cur.Spec.Template.Spec.Containers) == 0 {
		return fmt.Sprintf("running on the default, %d core(s)", DefaultConcurrency)
	}
	c := &dep.Spec.Template.Spec.Containers[0]
	c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "GOMAXPROCS" })
	for _, e := range cur.Spec.Template.Spec.Containers[0].Env {
		if e.Name == "GOMAXPROCS" {
			c.Env = append(c.Env, e)
			return "kept GOMAXPROCS=" + e.Value
		}
	}
	return "kept every core the cgroup allows"
}

// sameCommandLines reports whether the containers have the same arguments and environment
// variables. DeepDerivative alone takes a shorter list for a prefix of a longer one, so a setting
// removed from istiod-lite would stay on the waypoints. (Variables are compared as DeepDerivative
// does: the API server fills in defaults, such as a fieldRef's apiVersion.)
func sameCommandLines(cur, want []corev1.Container) bool {
	if len(cur) != len(want) {
		return false
	}
	for i := range want {
		if !slices.Equal(cur[i].Args, want[i].Args) || len(cur[i].Env) != len(want[i].Env) {
			return false
		}
	}
	return true
}

func hboneListener(g *gwv1.Gateway) (gwv1.Listener, bool) {
	for _, l := range g.Spec.Listeners {
		if string(l.Name) == mesh.WaypointListenerName && int(l.Port) == mesh.PortHBONE && string(l.Protocol) == mesh.WaypointListenerProtocolHB {
			return l, true
		}
	}
	return gwv1.Listener{}, false
}

// Desired returns the objects a waypoint Gateway needs. They are named after the Gateway; the
// ServiceAccount gives the waypoint its own identity.
//
// The waypoint's pods opt out of the mesh (istio.io/dataplane-mode: none) even in an ambient
// namespace: the waypoint speaks HBONE itself, and the node agent capturing its traffic would send
// it into ztunnel a second time. The label is on the pod template only: a Deployment's selector
// cannot change, and it stays the Gateway's name.
func Desired(g *gwv1.Gateway, p Proxy, l gwv1.Listener) (*corev1.ServiceAccount, *appsv1.Deployment, *corev1.Service) {
	labels := map[string]string{GatewayNameLabel: g.Name}
	podLabels := map[string]string{GatewayNameLabel: g.Name, mesh.LabelDataplaneMode: mesh.DataplaneModeNone}
	owner := []metav1.OwnerReference{{
		APIVersion: gwv1.GroupVersion.String(), Kind: "Gateway", Name: g.Name, UID: g.UID,
		Controller: ptr(true), BlockOwnerDeletion: ptr(true),
	}}
	meta := func() metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: g.Name, Namespace: g.Namespace, Labels: labels, OwnerReferences: owner}
	}
	sa := &corev1.ServiceAccount{ObjectMeta: meta()}
	env := []corev1.EnvVar{
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
	}
	if n, _ := Concurrency(g); n > 0 { // 0: the Go runtime's default, the cgroup's CPU limit
		env = append(env, corev1.EnvVar{Name: "GOMAXPROCS", Value: strconv.Itoa(n)})
	}
	dep := &appsv1.Deployment{
		ObjectMeta: meta(),
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels},
				Spec: corev1.PodSpec{
					ServiceAccountName: g.Name,
					// The waypoint talks to istiod-lite only, with a token of audience istio-ca;
					// it gets no token the API server would accept.
					AutomountServiceAccountToken: ptr(false),
					Volumes: []corev1.Volume{{Name: "istio-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
						Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
							Audience: mesh.TokenAudience, ExpirationSeconds: ptr(int64(3600)), Path: "istio-token"}}},
					}}}, {Name: "root-cert", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
						LocalObjectReference: corev1.LocalObjectReference{Name: RootConfigMap}}}}},
					Containers: []corev1.Container{{
						Name:  "waypoint",
						Image: p.Image,
						Args:  p.args(g),
						Env:   env,
						VolumeMounts: []corev1.VolumeMount{{Name: "istio-token", MountPath: TokenDir, ReadOnly: true},
							{Name: "root-cert", MountPath: RootCertDir, ReadOnly: true}},
						Ports: []corev1.ContainerPort{
							{Name: "hbone", ContainerPort: int32(l.Port)},
							{Name: "metrics", ContainerPort: mesh.PortMetrics},
							{Name: "ready", ContainerPort: mesh.PortReadiness},
						},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
							Path: "/", Port: intstrFromInt(mesh.PortReadiness)}}},
						SecurityContext: &corev1.SecurityContext{
							AllowPrivilegeEscalation: ptr(false),
							ReadOnlyRootFilesystem:   ptr(true),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
					}},
				},
			},
		},
	}
	svc := &corev1.Service{
		ObjectMeta: meta(),
		Spec: corev1.ServiceSpec{
			Selector: labels,
			Ports: []corev1.ServicePort{{Name: "mesh", Port: int32(l.Port), AppProtocol: ptr("hbone"),
				TargetPort: intstrFromInt(int(l.Port))}},
		},
	}
	return sa, dep, svc
}

type object interface {
	metav1.Object
	comparable
}

type client[T object] interface {
	Get(ctx context.Context, name string, o metav1.GetOptions) (T, error)
	Create(ctx context.Context, obj T, o metav1.CreateOptions) (T, error)
	Update(ctx context.Context, obj T, o metav1.UpdateOptions) (T, error)
}

// apply creates want or, when the existing object differs where we care (same), updates it with
// want's labels, owners and spec, keeping fields the API server fills in (cluster IP, defaults).
func apply[T object](ctx context.Context, c client[T], want T, same func(cur, want T) bool) error {
	cur, err := c.Get(ctx, want.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if _, err := c.Create(ctx, want, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %T %s: %w", want, want.GetName(), err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get %T %s: %w", want, want.GetName(), err)
	}
	if !isOwnedBy(cur, want) {
		// Never take over an object someone else made under the same name.
		return fmt.Errorf("%T %s exists and is not owned by the Gateway", want, want.GetName())
	}
	if same(cur, want) {
		return nil
	}
	want.SetResourceVersion(cur.GetResourceVersion())
	if _, err := c.Update(ctx, merge(cur, want), metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update %T %s: %w", want, want.GetName(), err)
	}
	return nil
}

func isOwnedBy(cur, want metav1.Object) bool {
	for _, o := range cur.GetOwnerReferences() {
		for _, w := range want.GetOwnerReferences() {
			if o.UID == w.UID {
				return true
			}
		}
	}
	return false
}

// merge keeps what the API server assigned to a Service (its cluster IPs) in the update.
func merge[T object](cur, want T) T {
	if cs, ok := any(cur).(*corev1.Service); ok {
		ws := any(want).(*corev1.Service)
		ws.Spec.ClusterIP, ws.Spec.ClusterIPs = cs.Spec.ClusterIP, cs.Spec.ClusterIPs
	}
	return want
}

func (r *Reconciler) writeStatus(ctx context.Context, g *gwv1.Gateway, st metav1.ConditionStatus, reason, msg string) error {
	g = g.DeepCopy()
	for _, c := range []metav1.Condition{
		{Type: string(gwv1.GatewayConditionAccepted), Status: metav1.ConditionTrue, Reason: string(gwv1.GatewayReasonAccepted), Message: "waypoint", ObservedGeneration: g.Generation},
		{Type: string(gwv1.GatewayConditionProgrammed), Status: st, Reason: reason, Message: msg, ObservedGeneration: g.Generation},
	} {
		meta.SetStatusCondition(&g.Status.Conditions, c)
	}
	if st == metav1.ConditionTrue {
		g.Status.Addresses = []gwv1.GatewayStatusAddress{{Type: ptr(gwv1.HostnameAddressType),
			Value: g.Name + "." + g.Namespace + ".svc." + r.clusterDomain}}
	}
	if _, err := r.gw.GatewayV1().Gateways(g.Namespace).UpdateStatus(ctx, g, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status: %w", err)
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

func intstrFromInt(p int) intstr.IntOrString { return intstr.FromInt32(int32(p)) }
