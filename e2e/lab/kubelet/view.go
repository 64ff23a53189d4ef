package kubelet

// What the kubelet API (server_linux.go) sees of pods. A pod worker owns its pod and containers
// and changes them from its own goroutine only; after every sync it publishes a copy of what the
// API needs, which request handlers read under the view's lock. A handler never touches a worker's
// fields.

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"
)

// podView is a published copy of a running pod's state.
type podView struct {
	Namespace, Name string
	UID             types.UID
	Netns           string // path; "" for a hostNetwork pod (the node's namespace)
	Cgroup          string // the pod's cgroup v2 directory
	Dir             string // the pod's directory (volumes, logs)
	Containers      []ctrView
}

// ctrView is a published copy of a container's state.
type ctrView struct {
	Name     string
	Image    string // the container's image: an exec may run a command its program plays (exec_linux.go)
	PID      int    // the container's process; 0 when not running
	Restarts int32
	User     *User
	Privs    Privileges
	Cgroups  []string // v1 cgroups with its limits, which an exec joins too
}

func (v *podView) container(name string) (ctrView, bool) {
	for _, c := range v.Containers {
		if c.Name == name {
			return c, true
		}
	}
	return ctrView{}, false
}

// publishedView holds a worker's latest view.
type publishedView struct {
	mu   sync.Mutex
	view *podView
}

func (p *publishedView) set(v *podView) {
	p.mu.Lock()
	p.view = v
	p.mu.Unlock()
}

func (p *publishedView) get() *podView {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.view
}

// publish makes the worker's current state visible to the kubelet API (nil before the sandbox
// exists and after teardown).
func (w *podWorker) publish() {
	if w.sb == nil {
		w.published.set(nil)
		return
	}
	v := &podView{Namespace: w.pod.Namespace, Name: w.pod.Name, UID: w.pod.UID, Netns: w.sb.netnsPath(), Cgroup: w.sb.cgroup, Dir: w.podDir}
	for _, c := range w.ctrs {
		cv := ctrView{Name: c.spec.Name, Image: c.spec.Image, Restarts: c.restarts, User: c.user, Privs: c.privs, Cgroups: c.cgroups}
		if c.running && c.cmd != nil && c.cmd.Process != nil {
			cv.PID = c.cmd.Process.Pid
		}
		v.Containers = append(v.Containers, cv)
	}
	w.published.set(v)
}

// lookup returns the view of the pod ns/name on this node (of UID uid when uid is not empty).
func (k *Kubelet) lookup(ns, name string, uid types.UID) *podView {
	k.mu.Lock()
	workers := make([]*podWorker, 0, len(k.workers))
	for _, w := range k.workers {
		workers = append(workers, w)
	}
	k.mu.Unlock()
	for _, w := range workers {
		v := w.published.get()
		if v != nil && v.Namespace == ns && v.Name == name && (uid == "" || v.UID == uid) {
			return v
		}
	}
	return nil
}
