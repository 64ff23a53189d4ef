package kubelet

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// Kubelet is one node's lab kubelet.
type Kubelet struct {
	cfg          Config
	log          *slog.Logger
	cs           kubernetes.Interface
	net          *network
	vols         volumes
	cgroupParent string
	// memRoot and cpuRoot mirror cgroupParent in the cgroup v1 memory and cpu hierarchies ("":
	// those limits are not enforced; see limits_linux.go).
	memRoot, cpuRoot string
	labBin           string
	marker           string

	mu      sync.Mutex
	workers map[types.UID]*podWorker
	wg      sync.WaitGroup
}

// New builds a kubelet from a validated config; marker is the environment entry that tags the
// lab's processes. Each pod gets a cgroup leaf under cfg.NodeCgroup.
func New(cfg Config, marker string, log *slog.Logger) (*Kubelet, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	rc.QPS, rc.Burst = 50, 100
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	nw, err := newNetwork(cfg.CNIBinDir, cfg.CNIConfDir, filepath.Join(cfg.StateDir, "cni-cache"),
		&nodeExec{labBin: self, view: NodeView{Root: cfg.NodeRoot, Cgroup: cfg.NodeCgroup}})
	if err != nil {
		return nil, err
	}
	if cfg.Domain == "" {
		cfg.Domain = "cluster.local"
	}
	memRoot, err := CgroupV1("memory", cfg.NodeCgroup)
	if err != nil || memRoot == "" {
		log.Warn("container memory limits are not enforced: the host has no cgroup v1 memory hierarchy", "err", err)
	}
	cpuRoot, err := CgroupV1("cpu", cfg.NodeCgroup)
	if err != nil || cpuRoot == "" {
		log.Warn("container cpu limits are not enforced: the host has no cgroup v1 cpu hierarchy", "err", err)
	}
	return &Kubelet{cfg: cfg, log: log, cs: cs, net: nw, vols: volumes{cs: cs, nodeRoot: cfg.NodeRoot, nodeCgroup: cfg.NodeCgroup, tokenMaxAge: cfg.TokenMaxAge},
		cgroupParent: cfg.NodeCgroup, memRoot: memRoot, cpuRoot: cpuRoot,
		labBin: self, marker: marker, workers: map[types.UID]*podWorker{}}, nil
}

// Run registers the node and runs its pods until ctx is cancelled; cancellation returns nil and
// leaves the pods running (a restarted kubelet does not restart them in the lab; lab down ends them).
func (k *Kubelet) Run(ctx context.Context) error {
	if err := os.MkdirAll(k.cgroupParent, 0o755); err != nil {
		return fmt.Errorf("node cgroup: %w", err)
	}
	if err := registerNode(ctx, k.cs, k.cfg); err != nil {
		return err
	}
	k.log.Info("node registered", "node", k.cfg.Node, "ip", k.cfg.NodeIP, "podCIDR", k.cfg.PodCIDR)
	apiErr := make(chan error, 1)
	if k.cfg.TLSCertFile != "" {
		go func() { apiErr <- k.serveAPI(ctx) }()
	}
	go keepAlive(ctx, k.cs, k.cfg, k.log)
	f := informers.NewSharedInformerFactoryWithOptions(k.cs, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "spec.nodeName=" + k.cfg.Node
	}))
	inf := f.Core().V1().Pods().Informer()
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { k.dispatch(ctx, o, false) },
		UpdateFunc: func(_, o any) { k.dispatch(ctx, o, false) },
		DeleteFunc: func(o any) { k.dispatch(ctx, o, true) },
	})
	if err != nil {
		return err
	}
	f.Start(ctx.Done())
	var err2 error
	select {
	case <-ctx.Done():
	case err2 = <-apiErr: // the API could not be served: a kubelet without it is no use
	}
	f.Shutdown()
	if err2 != nil {
		return err2
	}
	k.wg.Wait()
	return nil
}

func (k *Kubelet) dispatch(ctx context.Context, o any, deleted bool) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	pod, ok := o.(*corev1.Pod)
	if !ok {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	w, ok := k.workers[pod.UID]
	if !ok {
		terminal := pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
		if deleted || (terminal && pod.DeletionTimestamp == nil) {
			return
		}
		w = &podWorker{k: k, log: k.log, updates: make(chan *corev1.Pod, 1), pod: pod}
		k.workers[pod.UID] = w
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			w.run(ctx)
			k.mu.Lock()
			delete(k.workers, pod.UID)
			k.mu.Unlock()
		}()
		return
	}
	var next *corev1.Pod
	if !deleted {
		next = pod
	}
	// Latest wins: drop an update the worker has not taken yet.
	select {
	case <-w.updates:
	default:
	}
	w.updates <- next
}
