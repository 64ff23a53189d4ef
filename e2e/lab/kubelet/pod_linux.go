package kubelet

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podWorker owns one pod: it sets up its sandbox, runs its containers, probes them, restarts
// them per the restart policy, reports status and, when the pod is deleted, tears it all down.
type podWorker struct {
	k       *Kubelet
	log     *slog.Logger
	updates chan *corev1.Pod
	pod     *corev1.Pod
	sb      *sandbox
	ctrs    []*container
	mounts  map[string]string
	podDir  string
	startAt metav1.Time
	failure string // why the sandbox could not be set up (reported in status)
	sent    *corev1.PodStatus
	tokens  []*projectedToken // kept fresh (tokens.go)
	// published is what the kubelet API sees of the pod (view.go).
	published publishedView
}

func (w *podWorker) run(ctx context.Context) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			// The kubelet is stopping: leave the pods running, as a kubelet restart does.
			return
		case p := <-w.updates:
			if p == nil { // deleted from the API server without a graceful deletion
				w.terminate(ctx, 0)
				return
			}
			w.pod = p
		case <-tick.C:
		}
		if w.pod.DeletionTimestamp != nil {
			// The grace period the API server set (the pod's terminationGracePeriodSeconds,
			// or the delete call's), as a kubelet honours it: a proxy draining its
			// connections needs all of it.
			grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
			if g := w.pod.DeletionGracePeriodSeconds; g != nil {
				grace = *g
			}
			w.terminate(ctx, time.Duration(grace)*time.Second)
			return
		}
		w.sync(ctx)
	}
}

func (w *podWorker) sync(ctx context.Context) {
	if w.sb == nil {
		if err := w.setup(ctx); err != nil {
			if w.failure != err.Error() {
				w.log.Error("pod sandbox", "pod", w.pod.Namespace+"/"+w.pod.Name, "err", err)
			}
			w.failure = err.Error()
			w.report(ctx)
			return
		}
		w.failure = ""
	}
	now := time.Now()
	w.refreshTokens(ctx, now)
	for _, c := range w.ctrs {
		if c.reap() {
			w.log.Info("container exited", "pod", w.pod.Namespace+"/"+w.pod.Name, "container", c.spec.Name, "code", c.lastExitCode)
			if c.shouldRestart(w.pod.Spec.RestartPolicy) {
				c.nextStart = now.Add(backoff(c.restarts))
				c.waitReason = "CrashLoopBackOff"
			}
		}
		if !c.running && c.waitReason == "CrashLoopBackOff" && now.After(c.nextStart) {
			c.restarts++
			w.startContainer(c)
		}
		if c.running {
			w.probe(ctx, c, now)
		}
	}
	w.publish()
	w.report(ctx)
}

func (w *podWorker) setup(ctx context.Context) error {
	p := w.pod
	w.podDir = filepath.Join(w.k.cfg.StateDir, "pods", p.Namespace+"_"+p.Name+"_"+string(p.UID))
	if err := os.MkdirAll(w.podDir, 0o755); err != nil {
		return err
	}
	mounts, tokens, err := w.k.vols.prepare(ctx, p, w.podDir)
	if err != nil {
		return err
	}
	w.mounts, w.tokens = mounts, tokens
	if !p.Spec.HostNetwork {
		resolv := fmt.Sprintf("search %s.svc.%s svc.%s %s\nnameserver %s\noptions ndots:5\n",
			p.Namespace, w.k.cfg.Domain, w.k.cfg.Domain, w.k.cfg.Domain, w.k.cfg.ClusterDNS)
		if err := os.WriteFile(filepath.Join(w.podDir, "resolv.conf"), []byte(resolv), 0o644); err != nil {
			return err
		}
	}
	sb, err := w.k.net.setup(ctx, p, w.k.cgroupParent)
	if err != nil {
		return err
	}
	if p.Spec.HostNetwork {
		sb.podIP = w.k.cfg.NodeIP
	}
	w.sb = sb
	w.startAt = metav1.Now()
	w.ctrs = nil
	for _, cs := range p.Spec.Containers {
		c := &container{spec: cs}
		w.ctrs = append(w.ctrs, c)
		w.startContainer(c)
	}
	w.log.Info("pod started", "pod", p.Namespace+"/"+p.Name, "ip", sb.podIP)
	return nil
}

func (w *podWorker) startContainer(c *container) {
	prog, err := findProgram(w.k.cfg.BinDir, c.spec.Image)
	if err != nil {
		c.waitReason, c.waitMessage = "ErrImagePull", err.Error()
		return
	}
	env, err := containerEnv(podEnv{Pod: w.pod, PodIP: w.sb.podIP, HostIP: w.k.cfg.NodeIP, APIHost: w.k.cfg.APIHost, APIPort: w.k.cfg.APIPort}, &c.spec)
	if err != nil {
		c.waitReason, c.waitMessage = "CreateContainerConfigError", err.Error()
		return
	}
	hostname := w.hostname()
	// hostNetwork: the process sees the host's name; the variable stays the pod's, as before.
	env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=" + cmp.Or(hostname, w.pod.Name)}, env...)
	// The lab's marker lets lab down find pod processes even if the kubelet crashed.
	env = append(env, w.k.marker)
	var mounts []Mount
	for _, vm := range c.spec.VolumeMounts {
		src, ok := w.mounts[vm.Name]
		if !ok {
			c.waitReason, c.waitMessage = "CreateContainerConfigError", "volume "+vm.Name+" not found"
			return
		}
		if vm.SubPath != "" {
			src = filepath.Join(src, filepath.Clean("/"+vm.SubPath))
		}
		mounts = append(mounts, Mount{Source: src, Target: vm.MountPath, ReadOnly: vm.ReadOnly})
	}
	if !w.pod.Spec.HostNetwork {
		mounts = append(mounts, Mount{Source: filepath.Join(w.podDir, "resolv.conf"), Target: "/etc/resolv.conf", ReadOnly: true})
	}
	argv := append([]string{prog}, c.spec.Command...)
	if len(c.spec.Command) > 0 {
		// command replaces the image's entrypoint; the program is still the image's binary
		// when the command names it, otherwise the command is run as given.
		if filepath.Base(c.spec.Command[0]) != filepath.Base(prog) {
			argv = append([]string{}, c.spec.Command...)
		} else {
			argv = append([]string{prog}, c.spec.Command[1:]...)
		}
	}
	argv = append(argv, c.spec.Args...)
	if argv[0], err = w.k.resolveCommand(argv[0]); err != nil {
		c.waitReason, c.waitMessage = "RunContainerError", err.Error()
		return
	}
	priv, err := containerPrivileges(&c.spec)
	if err != nil {
		c.waitReason, c.waitMessage = "CreateContainerConfigError", err.Error()
		return
	}
	c.user, c.privs = runAs(w.pod, &c.spec), priv
	spec := InitSpec{Netns: w.sb.netnsPath(), Mounts: mounts, Dir: c.spec.WorkingDir, Argv: argv, Env: env,
		CreatedLog: w.k.cfg.CreatedLog, Hostname: hostname, User: c.user, Privileges: priv}
	spec.Cgroups, err = w.limitCgroups(c)
	c.cgroups = spec.Cgroups
	if err != nil {
		c.waitReason, c.waitMessage = "RunContainerError", err.Error()
		w.log.Error("container limits", "pod", w.pod.Namespace+"/"+w.pod.Name, "container", c.spec.Name, "err", err)
		return
	}
	// A kubelet keeps the logs of the current and the previous start (kubectl logs --previous).
	logPath := containerLogPath(w.podDir, c.spec.Name, c.restarts)
	if c.restarts >= 2 {
		old := containerLogPath(w.podDir, c.spec.Name, c.restarts-2)
		rotated, _ := rotatedLogs(old)
		for _, f := range append(rotated, old) {
			_ = os.Remove(f)
		}
	}
	if err := c.start(w.k.labBin, spec, w.sb.cgroup, logPath, w.k.marker); err != nil {
		c.waitReason, c.waitMessage = "RunContainerError", err.Error()
		w.log.Error("start container", "pod", w.pod.Namespace+"/"+w.pod.Name, "container", c.spec.Name, "err", err)
	}
}

// runAs returns who a container runs as: its securityContext's runAsUser and runAsGroup, else
// the pod's; the group defaults to 0, as for an image whose user has no group; the pod's
// supplementalGroups and fsGroup are added. nil: as the lab's images, root.
func runAs(pod *corev1.Pod, c *corev1.Container) *User {
	var uid, gid *int64
	var groups []int
	if ps := pod.Spec.SecurityContext; ps != nil {
		uid, gid = ps.RunAsUser, ps.RunAsGroup
		for _, g := range ps.SupplementalGroups {
			groups = append(groups, int(g))
		}
		if ps.FSGroup != nil {
			groups = append(groups, int(*ps.FSGroup))
		}
	}
	if cs := c.SecurityContext; cs != nil {
		if cs.RunAsUser != nil {
			uid = cs.RunAsUser
		}
		if cs.RunAsGroup != nil {
			gid = cs.RunAsGroup
		}
	}
	if uid == nil && gid == nil && len(groups) == 0 {
		return nil
	}
	u := &User{Groups: groups}
	if uid != nil {
		u.UID = int(*uid)
	}
	if gid != nil {
		u.GID = int(*gid)
	}
	return u
}

// hostname is the pod's hostname, as a runtime sets it in the pod's UTS namespace:
// spec.hostname, else the pod's name (cut to a DNS label); "" for a hostNetwork pod, which keeps
// the host's.
func (w *podWorker) hostname() string {
	if w.pod.Spec.HostNetwork {
		return ""
	}
	h := w.pod.Spec.Hostname
	if h == "" {
		h = w.pod.Name
	}
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-.")
	}
	return h
}

func (w *podWorker) probe(ctx context.Context, c *container, now time.Time) {
	since := now.Sub(c.started)
	due := func(p *corev1.Probe, last *time.Time) bool {
		if p == nil || since < time.Duration(p.InitialDelaySeconds)*time.Second {
			return false
		}
		period := 10 * time.Second
		if p.PeriodSeconds > 0 {
			period = time.Duration(p.PeriodSeconds) * time.Second
		}
		// Until the container is first ready, probe readiness every half second so that pods
		// become Ready promptly; afterwards keep to the declared period.
		if last == &c.lastProbe && !c.ready {
			period = 500 * time.Millisecond
		}
		if now.Sub(*last) < period {
			return false
		}
		*last = now
		return true
	}
	if rp := c.spec.ReadinessProbe; rp == nil {
		c.ready = true
	} else if due(rp, &c.lastProbe) {
		if err := runProbe(ctx, rp, w.sb.podIP, &c.spec); err != nil {
			c.readyOK = 0
			c.ready = false
		} else {
			c.readyOK++
			c.ready = c.readyOK >= max(rp.SuccessThreshold, 1)
		}
	}
	if lp := c.spec.LivenessProbe; lp != nil && due(lp, &c.lastLive) {
		if err := runProbe(ctx, lp, w.sb.podIP, &c.spec); err != nil {
			c.liveFails++
			threshold := lp.FailureThreshold
			if threshold <= 0 {
				threshold = 3
			}
			if c.liveFails >= threshold {
				w.log.Info("liveness probe failed, restarting", "pod", w.pod.Namespace+"/"+w.pod.Name, "container", c.spec.Name, "err", err)
				c.signal(syscall.SIGKILL)
			}
		} else {
			c.liveFails = 0
		}
	}
}

// terminate stops the containers (SIGTERM, then SIGKILL after grace), tears down the sandbox
// and removes the pod from the API server.
func (w *podWorker) terminate(ctx context.Context, grace time.Duration) {
	p := w.pod
	w.published.set(nil)
	for _, c := range w.ctrs {
		c.signal(syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for _, c := range w.ctrs {
		if !c.running {
			continue
		}
		select {
		case <-c.exited:
		case <-time.After(time.Until(deadline)):
			c.signal(syscall.SIGKILL)
			<-c.exited
		}
		c.reap()
	}
	if err := w.k.net.teardown(ctx, p); err != nil {
		w.log.Error("pod network teardown", "pod", p.Namespace+"/"+p.Name, "err", err)
	}
	// The pod's cgroup, and its containers' in the v1 hierarchies (limits_linux.go).
	for _, root := range []string{w.k.cgroupParent, w.k.memRoot, w.k.cpuRoot} {
		if root == "" {
			continue
		}
		if err := RemoveCgroupTree(filepath.Join(root, string(p.UID))); err != nil {
			w.log.Error("remove pod cgroups", "pod", p.Namespace+"/"+p.Name, "err", err)
		}
	}
	if w.podDir != "" {
		_ = os.RemoveAll(w.podDir)
	}
	err := w.k.cs.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{
		GracePeriodSeconds: new(int64), Preconditions: &metav1.Preconditions{UID: &p.UID}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		w.log.Error("delete pod", "pod", p.Namespace+"/"+p.Name, "err", err)
	}
	w.log.Info("pod removed", "pod", p.Namespace+"/"+p.Name)
}

// status computes the pod's status from its containers.
func (w *podWorker) status() corev1.PodStatus {
	p := w.pod
	// The API server sets the QoS class from the pod's resources at creation and refuses changes.
	qos := p.Status.QOSClass
	if qos == "" {
		qos = corev1.PodQOSBestEffort
	}
	st := corev1.PodStatus{Phase: corev1.PodPending, QOSClass: qos, HostIP: w.k.cfg.NodeIP,
		HostIPs: []corev1.HostIP{{IP: w.k.cfg.NodeIP}}}
	if w.sb != nil {
		st.PodIP = w.sb.podIP
		st.PodIPs = []corev1.PodIP{{IP: w.sb.podIP}}
		st.StartTime = &w.startAt
	}
	allReady, running, succeeded, failed, restarting := len(w.ctrs) > 0, 0, 0, 0, 0
	for i, cs := range p.Spec.Containers {
		s := corev1.ContainerStatus{Name: cs.Name, Image: cs.Image, ImageID: cs.Image}
		if i < len(w.ctrs) {
			c := w.ctrs[i]
			s.RestartCount, s.Ready = c.restarts, c.ready && c.running
			s.ContainerID = fmt.Sprintf("lab://%s/%s", p.UID, cs.Name)
			started := c.running
			s.Started = &started
			switch {
			case c.running:
				s.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.started)}
				running++
			case c.waitReason != "":
				s.State.Waiting = &corev1.ContainerStateWaiting{Reason: c.waitReason, Message: c.waitMessage}
				restarting++
			case c.terminated != nil:
				s.State.Terminated = c.terminated
				if c.terminated.ExitCode == 0 {
					succeeded++
				} else {
					failed++
				}
			}
			if c.lastExit != nil && (c.running || c.waitReason != "") {
				s.LastTerminationState.Terminated = c.lastExit
			}
			if !s.Ready {
				allReady = false
			}
		} else {
			reason := "ContainerCreating"
			if w.failure != "" {
				reason = "CreateContainerError"
			}
			s.State.Waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: w.failure}
			allReady = false
		}
		st.ContainerStatuses = append(st.ContainerStatuses, s)
	}
	switch {
	case running > 0 || restarting > 0:
		st.Phase = corev1.PodRunning
	case len(w.ctrs) > 0 && failed > 0:
		st.Phase = corev1.PodFailed
	case len(w.ctrs) > 0 && succeeded == len(w.ctrs):
		st.Phase = corev1.PodSucceeded
	}
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		c := corev1.PodCondition{Type: t, Status: corev1.ConditionFalse}
		if ok {
			c.Status = corev1.ConditionTrue
		}
		return c
	}
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodScheduled, true),
		cond(corev1.PodReadyToStartContainers, w.sb != nil),
		cond(corev1.PodInitialized, true),
		cond(corev1.ContainersReady, allReady),
		cond(corev1.PodReady, allReady),
	}
	return st
}

// report writes the pod's status when it changed, keeping transition times stable.
func (w *podWorker) report(ctx context.Context) {
	st := w.status()
	if w.sent != nil && apiequality.Semantic.DeepEqual(stripTimes(*w.sent), stripTimes(st)) {
		return
	}
	now := metav1.Now()
	for i := range st.Conditions {
		st.Conditions[i].LastTransitionTime = now
		for _, old := range w.pod.Status.Conditions {
			if old.Type == st.Conditions[i].Type && old.Status == st.Conditions[i].Status {
				st.Conditions[i].LastTransitionTime = old.LastTransitionTime
			}
		}
	}
	pod := w.pod.DeepCopy()
	pod.Status = st
	updated, err := w.k.cs.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		fresh, gerr := w.k.cs.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if gerr == nil && fresh.UID == pod.UID {
			fresh.Status = st
			updated, err = w.k.cs.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, fresh, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		if ctx.Err() == nil && !apierrors.IsNotFound(err) {
			w.log.Warn("update pod status", "pod", pod.Namespace+"/"+pod.Name, "err", err)
		}
		return
	}
	w.pod = updated
	w.sent = &st
}

func stripTimes(s corev1.PodStatus) corev1.PodStatus {
	s = *s.DeepCopy()
	for i := range s.Conditions {
		s.Conditions[i].LastTransitionTime = metav1.Time{}
	}
	return s
}
