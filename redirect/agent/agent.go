package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambient-mesh/ambient/internal/netutil"
	"github.com/ambient-mesh/ambient/redirect"
	"github.com/ambient-mesh/ambient/redirect/cni"
	"github.com/ambient-mesh/ambient/redirect/zds"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
)

var metav1PatchOptions = metav1.PatchOptions{FieldManager: "ambient-agent"}

// Datapath is what the agent needs of the redirector (*redirect.Redirector in production).
type Datapath interface {
	Enrol(redirect.Pod) error
	Unenrol(netns uint64) error
	AttachSKLookup(nsPath string) (uint64, error)
	DetachSKLookup(netns uint64) error
	EnrolledNetNS() ([]uint64, error)
	AllowProxyCgroup(id uint64) error
	ForgetProxyCgroup(id uint64) error
}

// ZDS is the agent's end of the ZDS exchange (*zds.Server in production).
type ZDS interface {
	Add(ctx context.Context, w zds.Workload) error
	Del(ctx context.Context, uid string) error
}

// Agent is the node agent.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	rc     *rest.Config
	cs     kubernetes.Interface
	reg    *prometheus.Registry
	m      *metrics
	procs  *procIndex
	locks  keyLocks
	events record.EventRecorder
	// cookieOf reads a network namespace's cookie (redirect.NetNSCookie).
	cookieOf func(nsPath string) (uint64, error)

	// Set in Run.
	dp        Datapath
	zds       ZDS
	podLister listersv1.PodLister
	nsLister  listersv1.NamespaceLister
	queue     workqueue.TypedRateLimitingInterface[string]

	mu    sync.Mutex
	pods  map[string]*podState // by namespace/name
	since map[string]time.Time // when a pod was first seen wanting in, until it is enabled

	ready atomic.Bool
}

// New builds the agent from a validated configuration. It connects to nothing.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rc, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Agent{
		cfg: cfg, log: log.With("component", "agent", "node", cfg.Node), rc: rc, cs: cs, reg: reg, m: newMetrics(reg),
		procs: newProcIndex(cfg.ProcDir, time.Now), cookieOf: redirect.NetNSCookie,
		pods: map[string]*podState{}, since: map[string]time.Time{},
	}, nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	// Onboarding a namespace patches one annotation per pod; the default 5/s would make 100
	// pods take 20 s.
	rc.QPS, rc.Burst = 100, 200
	rc.UserAgent = "ambient-agent"
	return rc, nil
}

// Run loads the programs, rebuilds the state of the node's pods, then serves ztunnel (ZDS), the
// CNI plugin and its own endpoints until ctx ends. Redirection outlives the agent: on return
// every pin stays, so pods keep being captured while it is away — unless its DaemonSet is being
// deleted, in which case it uninstalls (see Uninstall).
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx) // every goroutine below ends with it, also on an error
	defer cancel()
	rd, err := redirect.Load(a.cfg.Redirect)
	if err != nil {
		return fmt.Errorf("load redirection programs: %w", err)
	}
	defer rd.Close()
	a.dp = rd
	zs, err := zds.NewServer(zds.ServerConfig{
		Path: a.cfg.ZDSSocket(), Log: a.log, AckTimeout: a.cfg.AckTimeout,
		OnReplayAck: a.onReplayAck, OnProxy: a.onProxy,
	})
	if err != nil {
		return err
	}
	a.zds = zs

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.cs.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	a.events = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "ambient-agent", Host: a.cfg.Node})

	a.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](50*time.Millisecond, 30*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "pods"})
	defer a.queue.ShutDown()
	if err := a.startInformers(ctx); err != nil {
		return err
	}

	srv := newServers(a)
	errc := make(chan error, 4)
	go func() { errc <- srv.serveHTTP(ctx) }()

	// Rebuild before ztunnel can connect: a replay from a half-built state would make ztunnel
	// drop the pods not yet in it.
	if err := a.rebuild(ctx); err != nil {
		return err
	}
	go func() { errc <- zs.Run(ctx) }()
	go func() { errc <- srv.serveCNI(ctx) }()
	var wg sync.WaitGroup
	if a.cfg.InstallCNI {
		wg.Add(1)
		go func() { defer wg.Done(); a.keepCNIInstalled(ctx) }()
	}
	for range a.cfg.Workers {
		wg.Add(1)
		go func() { defer wg.Done(); a.work(ctx) }()
	}
	go a.resync(ctx)
	a.ready.Store(true)
	a.log.Info("node agent ready", "pods_enrolled", len(a.states()))

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	a.ready.Store(false)
	cancel()
	a.queue.ShutDown()
	// The workers and the CNI installer end before any uninstall: a last install tick after it
	// would put back an entry whose binary is gone, and every new pod of the node would fail.
	wg.Wait()
	if runErr == nil {
		runErr = a.uninstallIfDeleted(context.WithoutCancel(ctx))
	}
	return runErr
}

func (a *Agent) startInformers(ctx context.Context) error {
	f := informers.NewSharedInformerFactoryWithOptions(a.cs, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.cfg.Node).String()
	}))
	nf := informers.NewSharedInformerFactory(a.cs, 0)
	podInf := f.Core().V1().Pods()
	nsInf := nf.Core().V1().Namespaces()
	a.podLister, a.nsLister = podInf.Lister(), nsInf.Lister()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			a.queue.Add(key)
		}
	}
	if _, err := podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, DeleteFunc: enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	}); err != nil {
		return err
	}
	nsChanged := func(obj any) {
		ns, ok := obj.(*corev1.Namespace)
		if !ok {
			return
		}
		pods, _ := a.podLister.Pods(ns.Name).List(everything)
		for _, p := range pods {
			a.noteWant(p.Namespace + "/" + p.Name)
			a.queue.Add(p.Namespace + "/" + p.Name)
		}
	}
	if _, err := nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: nsChanged, DeleteFunc: nsChanged,
		UpdateFunc: func(old, obj any) {
			o, n := old.(*corev1.Namespace), obj.(*corev1.Namespace)
			if o.Labels[modeLabel] != n.Labels[modeLabel] {
				nsChanged(obj)
			}
		},
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	nf.Start(ctx.Done())
	for _, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return errors.New("pod watch did not sync")
		}
	}
	for _, ok := range nf.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return errors.New("namespace watch did not sync")
		}
	}
	return nil
}

// rebuild reconciles every pod of the node once, then sweeps.
func (a *Agent) rebuild(ctx context.Context) error {
	pods, err := a.podLister.List(everything)
	if err != nil {
		return err
	}
	for _, p := range pods {
		key := p.Namespace + "/" + p.Name
		if err := a.reconcile(ctx, key); err != nil {
			a.log.Warn("rebuild pod", "pod", key, "err", err)
			a.queue.AddRateLimited(key)
		}
	}
	return a.sweep()
}

// sweep unenrols the namespaces that no pod of the node owns any more (pods deleted while the
// agent was away). It does nothing while a pod that belongs in the mesh has no state yet (its
// setup failed or waits for its IP, or a sandbox is being set up): its namespace could be among
// those that look unowned, and unenrolling it would let its traffic past the proxy. The resync
// sweeps again.
func (a *Agent) sweep() error {
	pods, err := a.podLister.List(everything)
	if err != nil {
		return err
	}
	for _, p := range pods {
		if Wanted(a.namespace(p.Namespace), p).Enrol && !finished(p) && a.state(p.Namespace+"/"+p.Name) == nil {
			a.log.Info("not sweeping stale namespaces yet: a pod of the mesh is not set up", "pod", p.Namespace+"/"+p.Name)
			return nil
		}
	}
	cookies, err := a.dp.EnrolledNetNS()
	if err != nil {
		return err
	}
	owned := map[uint64]bool{}
	for _, st := range a.states() {
		owned[st.netns] = true
	}
	for _, c := range cookies {
		if !owned[c] {
			a.log.Info("unenrolling a namespace no pod of the node owns", "netns_cookie", c)
			if err := errors.Join(a.dp.DetachSKLookup(c), a.dp.Unenrol(c)); err != nil {
				a.log.Warn("unenrol stale namespace", "netns_cookie", c, "err", err)
			}
		}
	}
	return nil
}

func (a *Agent) work(ctx context.Context) {
	for {
		key, quit := a.queue.Get()
		if quit {
			return
		}
		err := a.reconcile(ctx, key)
		switch {
		case err == nil:
			a.queue.Forget(key)
		case ctx.Err() != nil:
		default:
			a.log.Warn("reconcile pod", "pod", key, "err", err)
			a.queue.AddRateLimited(key)
		}
		a.queue.Done(key)
	}
}

// resync requeues every pod of the node periodically.
func (a *Agent) resync(ctx context.Context) {
	t := time.NewTicker(a.cfg.Resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			pods, _ := a.podLister.List(everything)
			for _, p := range pods {
				a.queue.Add(p.Namespace + "/" + p.Name)
			}
			if err := a.sweep(); err != nil {
				a.log.Warn("sweep stale namespaces", "err", err)
			}
		}
	}
}

// onReplayAck is ztunnel's answer to a workload replayed on (re)connect: the pod is requeued so
// that its annotation follows.
func (a *Agent) onReplayAck(uid string, err error) {
	a.mu.Lock()
	var key string
	for k, st := range a.pods {
		if string(st.uid) == uid {
			st.acked = err == nil
			key = k
		}
	}
	a.mu.Unlock()
	if err != nil {
		a.log.Warn("ztunnel refused a replayed workload", "pod", key, "uid", uid, "err", err)
	}
	if key != "" && a.queue != nil {
		a.queue.Add(key)
	}
}

// onProxy exempts a connected ztunnel's cgroup from capture: its sockets in the pods'
// namespaces are its own traffic, not the pod's. The exemption is by cgroup, not socket mark,
// so that an application cannot claim it.
func (a *Agent) onProxy(p zds.Peer, connected bool) {
	if connected {
		a.m.proxies.Inc()
	} else {
		a.m.proxies.Dec()
	}
	dir, err := redirect.CgroupOfPID(a.cfg.Redirect.Cgroup, int(p.PID))
	if err != nil {
		a.log.Error("cannot find ztunnel's cgroup: its own connections from pods will be captured", "pid", p.PID, "err", err)
		return
	}
	id, err := redirect.CgroupID(dir)
	if err != nil {
		a.log.Error("cannot read ztunnel's cgroup id", "cgroup", dir, "err", err)
		return
	}
	if connected {
		if err := a.dp.AllowProxyCgroup(id); err != nil {
			a.log.Error("exempt ztunnel's cgroup", "cgroup", dir, "err", err)
		}
		a.log.Info("ztunnel connected", "pid", p.PID, "cgroup", dir)
		return
	}
	a.log.Info("ztunnel disconnected", "pid", p.PID, "cgroup", dir)
	// A container restart keeps the pod's cgroup, and its next ztunnel needs the exemption at
	// once; a pod that is gone takes its cgroup with it.
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		_ = a.dp.ForgetProxyCgroup(id)
	}
}

func (a *Agent) namespace(name string) *corev1.Namespace {
	ns, err := a.nsLister.Get(name)
	if err != nil {
		return nil
	}
	return ns
}

func (a *Agent) state(key string) *podState {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pods[key]
}

func (a *Agent) setState(st *podState) {
	a.mu.Lock()
	a.pods[st.key] = st
	a.m.enrolled.Set(float64(len(a.pods)))
	a.mu.Unlock()
}

func (a *Agent) dropState(key string) {
	a.mu.Lock()
	delete(a.pods, key)
	a.m.enrolled.Set(float64(len(a.pods)))
	a.mu.Unlock()
}

func (a *Agent) states() []*podState {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*podState, 0, len(a.pods))
	for _, st := range a.pods {
		out = append(out, st)
	}
	return out
}

// noteWant records when a pod's enrolment was asked for (a label seen), for the onboarding time.
func (a *Agent) noteWant(key string) {
	a.mu.Lock()
	if _, ok := a.since[key]; !ok {
		a.since[key] = time.Now()
	}
	a.mu.Unlock()
}

func (a *Agent) wantSince(key string) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.since[key]
	if !ok && a.pods[key] == nil {
		t = time.Now()
		a.since[key] = t
	}
	return t
}

func (a *Agent) clearWant(key string) {
	a.mu.Lock()
	delete(a.since, key)
	a.mu.Unlock()
}

// keyLocks serialises work on one pod between the workers and the CNI server.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	sync.Mutex
	users int
}

func (l *keyLocks) lock(key string) (unlock func()) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*keyLock{}
	}
	k := l.m[key]
	if k == nil {
		k = &keyLock{}
		l.m[key] = k
	}
	k.users++
	l.mu.Unlock()
	k.Lock()
	return func() {
		k.Unlock()
		l.mu.Lock()
		if k.users--; k.users == 0 {
			delete(l.m, key)
		}
		l.mu.Unlock()
	}
}

func splitKey(key string) (ns, name string, ok bool) {
	ns, name, ok = strings.Cut(key, "/")
	return
}

// servers are the agent's listeners: metrics, readiness, and the CNI socket.
type servers struct{ a *Agent }

func newServers(a *Agent) *servers { return &servers{a} }

func (s *servers) serveHTTP(ctx context.Context) error {
	metrics := http.NewServeMux()
	metrics.Handle("/metrics", promhttp.HandlerFor(s.a.reg, promhttp.HandlerOpts{}))
	ready := http.NewServeMux()
	ready.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !s.a.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return netutil.ServeHTTP(ctx, map[string]http.Handler{s.a.cfg.MetricsAddr: metrics, s.a.cfg.ReadyAddr: ready})
}

// serveCNI answers the CNI plugin on its unix socket.
func (s *servers) serveCNI(ctx context.Context) error {
	path := s.a.cfg.CNISocket()
	if err := os.MkdirAll(s.a.cfg.RunDir, 0o755); err != nil {
		return err
	}
	_ = os.Remove(path) // a socket left by an earlier agent
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen on CNI socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return err
	}
	srv := &http.Server{Handler: cni.NewServeMux(s.a, s.a.cfg.AckTimeout+5*time.Second), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve CNI socket: %w", err)
	}
	return nil
}
