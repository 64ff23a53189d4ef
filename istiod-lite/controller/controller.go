// Package controller watches the Kubernetes API with shared informers and turns the cached state
// into model snapshots. It owns the informers and their caches; it never writes to the API server
// and never translates (that is the model package's job).
package controller

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	networkinglisters "istio.io/client-go/pkg/listers/networking/v1"
	securitylisters "istio.io/client-go/pkg/listers/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gwinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
	gwlisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"

	"github.com/ambient-mesh/ambient/istiod-lite/ca"
	"github.com/ambient-mesh/ambient/istiod-lite/model"
	"github.com/ambient-mesh/ambient/istiod-lite/routes"
	"github.com/ambient-mesh/ambient/istiod-lite/waypoint"
)

// Clients are the API clients the controller watches through.
type Clients struct {
	Kube    kubernetes.Interface
	Istio   istioclient.Interface
	Gateway gwclient.Interface
}

// Controller caches the objects translation reads and signals changes.
type Controller struct {
	log     *slog.Logger
	changed chan struct{}
	// cachesSynced is closed by Run once every cache holds its initial list.
	cachesSynced chan struct{}

	// repairs holds "<namespace>/<gateway>" of waypoints one of whose objects (ServiceAccount,
	// Deployment, Service) was changed or deleted by someone else, until TakeRepairs.
	mu      sync.Mutex
	repairs map[string]bool

	kubeFactory informers.SharedInformerFactory
	// waypointFactory watches the ServiceAccounts and Deployments of waypoints.
	waypointFactory informers.SharedInformerFactory
	// rootFactory watches the root certificate ConfigMaps (ca.RootConfigMap), and no other.
	rootFactory  informers.SharedInformerFactory
	istioFactory istioinformers.SharedInformerFactory
	gwFactory    gwinformers.SharedInformerFactory
	synced       []cache.InformerSynced

	namespaces corelisters.NamespaceLister
	nodes      corelisters.NodeLister
	pods       corelisters.PodLister
	services   corelisters.ServiceLister
	gateways   gwlisters.GatewayLister
	httpRoutes gwlisters.HTTPRouteLister
	grpcRoutes gwlisters.GRPCRouteLister
	refGrants  gwlisters.ReferenceGrantLister
	authz      securitylisters.AuthorizationPolicyLister
	peerAuthn  securitylisters.PeerAuthenticationLister
	reqAuthn   securitylisters.RequestAuthenticationLister
	destRules  networkinglisters.DestinationRuleLister
	rootCMs    corelisters.ConfigMapLister
	podIndex   cache.Indexer
}

const nodeIndex = "spec.nodeName"

// PodsOnNode lists the cached pods scheduled on node.
func (c *Controller) PodsOnNode(node string) ([]*corev1.Pod, error) {
	objs, err := c.podIndex.ByIndex(nodeIndex, node)
	if err != nil {
		return nil, err
	}
	out := make([]*corev1.Pod, 0, len(objs))
	for _, o := range objs {
		if p, ok := o.(*corev1.Pod); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// New registers the informers; nothing runs until Run.
func New(log *slog.Logger, c Clients) (*Controller, error) {
	ctl := &Controller{
		log:          log.With("component", "controller"),
		changed:      make(chan struct{}, 1),
		cachesSynced: make(chan struct{}),
		kubeFactory:  informers.NewSharedInformerFactory(c.Kube, 0),
		istioFactory: istioinformers.NewSharedInformerFactory(c.Istio, 0),
		gwFactory:    gwinformers.NewSharedInformerFactory(c.Gateway, 0),
		repairs:      map[string]bool{},
		// The objects istiod-lite creates for waypoints, and only those (they carry the label).
		waypointFactory: informers.NewSharedInformerFactoryWithOptions(c.Kube, 0,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = waypoint.GatewayNameLabel })),
		rootFactory: informers.NewSharedInformerFactoryWithOptions(c.Kube, 0,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + ca.RootConfigMap })),
	}
	core := ctl.kubeFactory.Core().V1()
	sec := ctl.istioFactory.Security().V1()
	netw := ctl.istioFactory.Networking().V1()
	gw := ctl.gwFactory.Gateway().V1()
	ctl.namespaces = core.Namespaces().Lister()
	ctl.nodes = core.Nodes().Lister()
	ctl.pods = core.Pods().Lister()
	ctl.services = core.Services().Lister()
	ctl.gateways = gw.Gateways().Lister()
	ctl.httpRoutes = gw.HTTPRoutes().Lister()
	ctl.grpcRoutes = gw.GRPCRoutes().Lister()
	ctl.refGrants = gw.ReferenceGrants().Lister()
	ctl.authz = sec.AuthorizationPolicies().Lister()
	ctl.peerAuthn = sec.PeerAuthentications().Lister()
	ctl.reqAuthn = sec.RequestAuthentications().Lister()
	ctl.destRules = netw.DestinationRules().Lister()

	// The CA asks which pods run on a caller's node on every ztunnel request.
	if err := core.Pods().Informer().AddIndexers(cache.Indexers{nodeIndex: func(obj any) ([]string, error) {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
			return []string{p.Spec.NodeName}, nil
		}
		return nil, nil
	}}); err != nil {
		return nil, fmt.Errorf("add pod node index: %w", err)
	}
	ctl.podIndex = core.Pods().Informer().GetIndexer()

	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { ctl.notify() },
		UpdateFunc: func(any, any) { ctl.notify() },
		DeleteFunc: func(any) { ctl.notify() },
	}
	// Nodes: only their names and topology labels matter (workload locality). Their status is
	// rewritten on every heartbeat and their spec holds nothing translation reads: the cache
	// keeps a stripped copy, and only a change of topology labels is a change.
	nodes := core.Nodes().Informer()
	if err := nodes.SetTransform(stripNode); err != nil {
		return nil, fmt.Errorf("set node transform: %w", err)
	}
	if _, err := nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { ctl.notify() },
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.Node)
			n, ok2 := cur.(*corev1.Node)
			if !ok1 || !ok2 || model.Topology(o) != model.Topology(n) {
				ctl.notify()
			}
		},
		DeleteFunc: func(any) { ctl.notify() },
	}); err != nil {
		return nil, fmt.Errorf("add node event handler: %w", err)
	}
	ctl.synced = append(ctl.synced, nodes.HasSynced)

	// A waypoint's objects changed or deleted by hand are repaired at the next push (leader only)
	// rather than at the periodic resync.
	repair := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		m, ok := obj.(metav1.Object)
		if !ok {
			return
		}
		if gw := m.GetLabels()[waypoint.GatewayNameLabel]; gw != "" {
			ctl.mu.Lock()
			ctl.repairs[m.GetNamespace()+"/"+gw] = true
			ctl.mu.Unlock()
			ctl.notify()
		}
	}
	repairs := cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(metav1.Object)
			c, ok2 := cur.(metav1.Object)
			// A Deployment's status changes all the time; only a change of what istiod-lite
			// wrote (its spec, its generation) or of its labels needs a repair.
			if ok1 && ok2 && (o.GetGeneration() != c.GetGeneration() || (c.GetGeneration() == 0 && o.GetResourceVersion() != c.GetResourceVersion()) ||
				!maps.Equal(o.GetLabels(), c.GetLabels())) {
				repair(cur)
			}
		},
		DeleteFunc: repair,
	}
	if _, err := core.Services().Informer().AddEventHandler(repairs); err != nil {
		return nil, fmt.Errorf("add repair handler: %w", err)
	}
	for _, inf := range []cache.SharedIndexInformer{
		ctl.waypointFactory.Core().V1().ServiceAccounts().Informer(),
		ctl.waypointFactory.Apps().V1().Deployments().Informer(),
	} {
		if err := inf.SetTransform(dropManagedFields); err != nil {
			return nil, fmt.Errorf("set transform: %w", err)
		}
		if _, err := inf.AddEventHandler(repairs); err != nil {
			return nil, fmt.Errorf("add repair handler: %w", err)
		}
		ctl.synced = append(ctl.synced, inf.HasSynced)
	}

	// Root certificate ConfigMaps: one edited or deleted by hand is rewritten at the next push.
	roots := ctl.rootFactory.Core().V1().ConfigMaps()
	ctl.rootCMs = roots.Lister()
	if err := roots.Informer().SetTransform(dropManagedFields); err != nil {
		return nil, fmt.Errorf("set transform: %w", err)
	}
	if _, err := roots.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { ctl.notify() }, // created by someone else first, perhaps with other data
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.ConfigMap)
			c, ok2 := cur.(*corev1.ConfigMap)
			if !ok1 || !ok2 || !maps.Equal(o.Data, c.Data) {
				ctl.notify()
			}
		},
		DeleteFunc: func(any) { ctl.notify() },
	}); err != nil {
		return nil, fmt.Errorf("add root configmap handler: %w", err)
	}
	ctl.synced = append(ctl.synced, roots.Informer().HasSynced)

	for _, inf := range []cache.SharedIndexInformer{
		core.Namespaces().Informer(), core.Pods().Informer(), core.Services().Informer(),
		gw.Gateways().Informer(), sec.AuthorizationPolicies().Informer(), sec.PeerAuthentications().Informer(),
		sec.RequestAuthentications().Informer(), netw.DestinationRules().Informer(),
		gw.HTTPRoutes().Informer(), gw.GRPCRoutes().Informer(), gw.ReferenceGrants().Informer(),
	} {
		// managedFields are often the largest part of an object and translation never reads
		// them: drop them before they reach the cache (RSS at 10k pods).
		if err := inf.SetTransform(dropManagedFields); err != nil {
			return nil, fmt.Errorf("set transform: %w", err)
		}
		if _, err := inf.AddEventHandler(handler); err != nil {
			return nil, fmt.Errorf("add event handler: %w", err)
		}
		ctl.synced = append(ctl.synced, inf.HasSynced)
	}
	return ctl, nil
}

// notify coalesces: one pending signal stands for any number of changes.
func (c *Controller) notify() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// Changed signals, coalesced, that the cached state changed since the last receive.
func (c *Controller) Changed() <-chan struct{} { return c.changed }

// Run starts the informers, waits for their caches to fill, and blocks until ctx is done.
func (c *Controller) Run(ctx context.Context) error {
	c.kubeFactory.Start(ctx.Done())
	c.waypointFactory.Start(ctx.Done())
	defer c.waypointFactory.Shutdown()
	c.rootFactory.Start(ctx.Done())
	defer c.rootFactory.Shutdown()
	c.istioFactory.Start(ctx.Done())
	c.gwFactory.Start(ctx.Done())
	defer c.kubeFactory.Shutdown()
	defer c.istioFactory.Shutdown()
	defer c.gwFactory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("informer caches did not sync")
	}
	c.log.Info("caches synced")
	c.notify() // before the close: whoever waits for it finds the signal pending
	close(c.cachesSynced)
	<-ctx.Done()
	return nil
}

// Input reads the cached state. The objects are the cache's: callers must not modify them.
func (c *Controller) Input() (model.Input, error) {
	var in model.Input
	var err error
	all := labels.Everything()
	if in.Namespaces, err = c.namespaces.List(all); err != nil {
		return in, fmt.Errorf("list namespaces: %w", err)
	}
	if in.Nodes, err = c.nodes.List(all); err != nil {
		return in, fmt.Errorf("list nodes: %w", err)
	}
	if in.Pods, err = c.pods.List(all); err != nil {
		return in, fmt.Errorf("list pods: %w", err)
	}
	if in.Services, err = c.services.List(all); err != nil {
		return in, fmt.Errorf("list services: %w", err)
	}
	if in.Gateways, err = c.gateways.List(all); err != nil {
		return in, fmt.Errorf("list gateways: %w", err)
	}
	if in.AuthorizationPolicies, err = c.authz.List(all); err != nil {
		return in, fmt.Errorf("list authorization policies: %w", err)
	}
	if in.PeerAuthentications, err = c.peerAuthn.List(all); err != nil {
		return in, fmt.Errorf("list peer authentications: %w", err)
	}
	if in.RequestAuthentications, err = c.reqAuthn.List(all); err != nil {
		return in, fmt.Errorf("list request authentications: %w", err)
	}
	if in.DestinationRules, err = c.destRules.List(all); err != nil {
		return in, fmt.Errorf("list destination rules: %w", err)
	}
	// Routes are checked by translation (problems), not translated.
	rin, err := c.RouteInput()
	if err != nil {
		return in, err
	}
	in.HTTPRoutes, in.GRPCRoutes, in.ReferenceGrants = rin.HTTPRoutes, rin.GRPCRoutes, rin.ReferenceGrants
	return in, nil
}

// RootsPublished reports whether namespace's root certificate ConfigMap, as cached, holds roots.
func (c *Controller) RootsPublished(namespace, roots string) bool {
	cm, err := c.rootCMs.ConfigMaps(namespace).Get(ca.RootConfigMap)
	return err == nil && cm.Data[ca.RootConfigMapKey] == roots
}

// TakeRepairs returns, and forgets, the waypoints ("<namespace>/<gateway>") whose objects were
// changed or deleted since the last call.
func (c *Controller) TakeRepairs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := slices.Sorted(maps.Keys(c.repairs))
	clear(c.repairs)
	return out
}

// RouteInput reads the cached routes and ReferenceGrants; the Services and Gateways route status
// also depends on are the caller's, from Input. The objects are the cache's.
func (c *Controller) RouteInput() (routes.Input, error) {
	var in routes.Input
	var err error
	all := labels.Everything()
	if in.HTTPRoutes, err = c.httpRoutes.List(all); err != nil {
		return in, fmt.Errorf("list HTTPRoutes: %w", err)
	}
	if in.GRPCRoutes, err = c.grpcRoutes.List(all); err != nil {
		return in, fmt.Errorf("list GRPCRoutes: %w", err)
	}
	if in.ReferenceGrants, err = c.refGrants.List(all); err != nil {
		return in, fmt.Errorf("list ReferenceGrants: %w", err)
	}
	return in, nil
}

// Debounce calls fn for changes. A change that comes after a quiet period (no change signalled for
// quiet before it) is handled at once: a lone change, the common case, is not delayed, even when
// it follows the previous call closely. Changes that follow each other closely are coalesced: fn
// runs once no change arrived for quiet, or at the latest maxDelay after the first change of the
// burst, so a steady stream of changes cannot starve calls. It blocks until ctx is done.
//
// fn is first called once every cache holds its initial list: a translation of a partly listed
// cluster would publish a partial configuration (a missing DENY policy allows what it denies).
func (c *Controller) Debounce(ctx context.Context, quiet, maxDelay time.Duration, fn func()) {
	select {
	case <-ctx.Done():
		return
	case <-c.cachesSynced:
	}
	var last time.Time // when the last change signal was received
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.changed:
		}
		first := time.Now()
		lone := first.Sub(last) >= quiet
		last = first
		if lone {
			fn()
			last = c.afterCall(last)
			continue
		}
		timer := time.NewTimer(quiet)
	burst:
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-c.changed:
				last = time.Now()
				wait := min(quiet, maxDelay-last.Sub(first))
				if wait <= 0 {
					timer.Stop()
					break burst
				}
				timer.Reset(wait)
			case <-timer.C:
				break burst
			}
		}
		fn()
		last = c.afterCall(last)
	}
}

// afterCall returns the time a burst's last change counts from once fn returned: a change
// signalled while fn ran is not lone (the cluster kept changing), however long fn took.
func (c *Controller) afterCall(last time.Time) time.Time {
	if len(c.changed) > 0 {
		return time.Now()
	}
	return last
}

// Poke signals a change without one, so that work that depends on more than the cache (a
// replica becoming leader) runs again.
func (c *Controller) Poke() { c.notify() }

// stripNode keeps what translation reads of a Node: its identity and labels.
func stripNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{
		TypeMeta: n.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion,
			Labels: n.Labels, DeletionTimestamp: n.DeletionTimestamp},
	}, nil
}

func dropManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}
