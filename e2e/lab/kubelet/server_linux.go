package kubelet

// The kubelet API on <node IP>:10250, what the API server calls for `kubectl exec`, `attach`,
// `logs` and `port-forward`, and what /api/v1/nodes/<node>/proxy reaches:
//
//	/healthz                                        ok
//	/containerLogs/{ns}/{pod}/{container}           follow, tailLines, sinceSeconds, sinceTime,
//	                                                timestamps, limitBytes, previous, stream
//	/exec/{ns}/{pod}[/{uid}]/{container}?command=…  SPDY (v1–v4) or WebSocket (v5)
//	/attach/{ns}/{pod}[/{uid}]/{container}          the container's output from now on
//	/portForward/{ns}/{pod}[/{uid}]                 SPDY or WebSocket
//
// The streaming protocols are Kubernetes' own (k8s.io/cri-streaming, the server the kubelet and
// container runtimes use), not written here. Rules, as a kubelet keeps them: TLS with a serving
// certificate from the cluster CA; every request is authenticated (a client certificate from that
// CA, or a bearer token checked by a TokenReview) and authorized by a SubjectAccessReview on the
// node's `nodes/<subresource>` — `proxy` for everything but /healthz, which also accepts
// `nodes/healthz` — with the verb `create` for the streaming endpoints whatever the HTTP method,
// so a `get` permission never opens a shell. Decisions are cached briefly (allowed 5 min,
// denied 30 s), as the kubelet's webhook authorizer does.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

const (
	// DefaultServerPort is the kubelet API's port.
	DefaultServerPort = 10250
	// The kubelet's defaults: streamingConnectionIdleTimeout, and the time a client has to open
	// its streams.
	streamIdleTimeout     = 4 * time.Hour
	streamCreationTimeout = 30 * time.Second
)

// apiServer is the kubelet API of one node.
type apiServer struct {
	k   *Kubelet
	cs  kubernetes.Interface
	log *slog.Logger

	mu    sync.Mutex
	authz map[string]authzDecision
	now   func() time.Time
}

type authzDecision struct {
	allowed bool
	expires time.Time
}

// serveAPI serves the kubelet API until ctx ends.
func (k *Kubelet) serveAPI(ctx context.Context) error {
	cert, err := tls.LoadX509KeyPair(k.cfg.TLSCertFile, k.cfg.TLSKeyFile)
	if err != nil {
		return fmt.Errorf("kubelet serving certificate: %w", err)
	}
	caPEM, err := os.ReadFile(k.cfg.ClientCAFile)
	if err != nil {
		return fmt.Errorf("client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("client CA %s: no certificate", k.cfg.ClientCAFile)
	}
	addr := net.JoinHostPort(k.cfg.NodeIP, strconv.Itoa(k.serverPort()))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("kubelet API: %w", err)
	}
	a := &apiServer{k: k, cs: k.cs, log: k.log, authz: map[string]authzDecision{}, now: time.Now}
	srv := &http.Server{
		Handler:           a.handler(),
		ReadHeaderTimeout: 30 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool,
			ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS12},
		ErrorLog: slog.NewLogLogger(k.log.Handler(), slog.LevelWarn),
	}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	k.log.Info("kubelet API serving", "addr", addr)
	if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (k *Kubelet) serverPort() int {
	if k.cfg.ServerPort > 0 {
		return k.cfg.ServerPort
	}
	return DefaultServerPort
}

func (a *apiServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{ctr}", a.containerLogs)
	for _, p := range []string{"/exec/{ns}/{pod}/{ctr}", "/exec/{ns}/{pod}/{uid}/{ctr}"} {
		mux.HandleFunc(p, a.exec)
	}
	for _, p := range []string{"/attach/{ns}/{pod}/{ctr}", "/attach/{ns}/{pod}/{uid}/{ctr}"} {
		mux.HandleFunc(p, a.attach)
	}
	for _, p := range []string{"/portForward/{ns}/{pod}", "/portForward/{ns}/{pod}/{uid}"} {
		mux.HandleFunc(p, a.portForward)
	}
	return a.authorize(mux)
}

// authorize authenticates and authorizes every request before mux sees it.
func (a *apiServer) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, groups, err := a.authenticate(r)
		if err != nil {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		verb, subresources := requestAttributes(r)
		for _, sub := range subresources {
			ok, err := a.allowed(r.Context(), user, groups, verb, sub)
			if err != nil {
				a.log.Warn("kubelet API authorization", "user", user, "err", err)
				http.Error(w, "authorization failed", http.StatusInternalServerError)
				return
			}
			if ok {
				next.ServeHTTP(w, r)
				return
			}
		}
		msg := fmt.Sprintf("Forbidden (user=%s, verb=%s, resource=nodes, subresource(s)=%v)", user, verb, subresources)
		http.Error(w, msg, http.StatusForbidden)
	})
}

// requestAttributes maps a request to the verb and the nodes subresources (any one suffices)
// it needs.
func requestAttributes(r *http.Request) (verb string, subresources []string) {
	first, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	switch first {
	case "exec", "attach", "portForward":
		return "create", []string{"proxy"}
	case "healthz":
		subresources = []string{"healthz", "proxy"}
	default:
		subresources = []string{"proxy"}
	}
	switch r.Method {
	case http.MethodPost:
		verb = "create"
	case http.MethodPut:
		verb = "update"
	case http.MethodPatch:
		verb = "patch"
	case http.MethodDelete:
		verb = "delete"
	default:
		verb = "get"
	}
	return verb, subresources
}

// authenticate returns who made the request: the subject of a verified client certificate, or
// the user a TokenReview finds for a bearer token.
func (a *apiServer) authenticate(r *http.Request) (string, []string, error) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		c := r.TLS.VerifiedChains[0][0]
		return c.Subject.CommonName, c.Subject.Organization, nil
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return "", nil, errors.New("no credentials")
	}
	tr, err := a.cs.AuthenticationV1().TokenReviews().Create(r.Context(),
		&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		return "", nil, err
	}
	if !tr.Status.Authenticated {
		return "", nil, errors.New("token not authenticated")
	}
	return tr.Status.User.Username, tr.Status.User.Groups, nil
}

func (a *apiServer) allowed(ctx context.Context, user string, groups []string, verb, sub string) (bool, error) {
	key := strings.Join([]string{user, strings.Join(groups, ","), verb, sub}, "\x00")
	now := a.now()
	a.mu.Lock()
	d, ok := a.authz[key]
	a.mu.Unlock()
	if ok && now.Before(d.expires) {
		return d.allowed, nil
	}
	sar, err := a.cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{User: user, Groups: groups, ResourceAttributes: &authzv1.ResourceAttributes{
			Verb: verb, Resource: "nodes", Subresource: sub, Name: a.k.cfg.Node}},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	d = authzDecision{allowed: sar.Status.Allowed, expires: now.Add(30 * time.Second)}
	if d.allowed {
		d.expires = now.Add(5 * time.Minute)
	}
	a.mu.Lock()
	if len(a.authz) > 1000 { // a bound, not an LRU: the set of callers is small
		clear(a.authz)
	}
	a.authz[key] = d
	a.mu.Unlock()
	return d.allowed, nil
}

// target finds the pod and container a request names, answering 404 when there is none.
func (a *apiServer) target(w http.ResponseWriter, r *http.Request, needContainer bool) (*podView, ctrView, bool) {
	ns, name := r.PathValue("ns"), r.PathValue("pod")
	v := a.k.lookup(ns, name, types.UID(r.PathValue("uid")))
	if v == nil {
		http.Error(w, fmt.Sprintf("pod %s/%s not found on node %s", ns, name, a.k.cfg.Node), http.StatusNotFound)
		return nil, ctrView{}, false
	}
	if !needContainer {
		return v, ctrView{}, true
	}
	c, ok := v.container(r.PathValue("ctr"))
	if !ok {
		http.Error(w, fmt.Sprintf("container %s is not valid for pod %s/%s", r.PathValue("ctr"), ns, name), http.StatusNotFound)
		return nil, ctrView{}, false
	}
	return v, c, true
}

// streamTarget is what exec and attach share: the pod and container named, and the streams asked
// for; it answers the request itself when it cannot go on.
func (a *apiServer) streamTarget(w http.ResponseWriter, r *http.Request) (*podView, ctrView, *remotecommand.Options, bool) {
	v, c, ok := a.target(w, r, true)
	if !ok {
		return nil, c, nil, false
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil, c, nil, false
	}
	return v, c, opts, true
}

func (a *apiServer) exec(w http.ResponseWriter, r *http.Request) {
	v, c, opts, ok := a.streamTarget(w, r)
	if !ok {
		return
	}
	cmd := r.URL.Query()["command"]
	if len(cmd) == 0 {
		http.Error(w, "no command", http.StatusBadRequest)
		return
	}
	a.log.Info("exec", "pod", v.Namespace+"/"+v.Name, "container", c.Name, "command", cmd, "tty", opts.TTY)
	remotecommand.ServeExec(w, r, executor{a.k, v}, v.Namespace+"/"+v.Name, string(v.UID), c.Name, cmd, opts,
		streamIdleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (a *apiServer) attach(w http.ResponseWriter, r *http.Request) {
	v, c, opts, ok := a.streamTarget(w, r)
	if !ok {
		return
	}
	remotecommand.ServeAttach(w, r, executor{a.k, v}, v.Namespace+"/"+v.Name, string(v.UID), c.Name, opts,
		streamIdleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (a *apiServer) portForward(w http.ResponseWriter, r *http.Request) {
	v, _, ok := a.target(w, r, false)
	if !ok {
		return
	}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, r, forwarder{v}, v.Namespace+"/"+v.Name, string(v.UID), opts,
		streamIdleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// containerLogs serves a container's log with the query of a PodLogOptions.
func (a *apiServer) containerLogs(w http.ResponseWriter, r *http.Request) {
	v, c, ok := a.target(w, r, true)
	if !ok {
		return
	}
	o, previous, err := parseLogQuery(r, a.now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	restart := c.Restarts
	running := func() bool {
		cur := a.k.lookup(v.Namespace, v.Name, v.UID)
		if cur == nil {
			return false
		}
		cc, ok := cur.container(c.Name)
		return ok && cc.PID != 0 && cc.Restarts == restart
	}
	if previous {
		if c.Restarts == 0 {
			http.Error(w, fmt.Sprintf("previous terminated container %q in pod %q not found", c.Name, v.Name), http.StatusBadRequest)
			return
		}
		restart, o.Follow = c.Restarts-1, false
	}
	path := containerLogPath(v.Dir, c.Name, restart)
	if _, err := os.Stat(path); err != nil {
		http.Error(w, fmt.Sprintf("container %q in pod %q is waiting to start", c.Name, v.Name), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	out := io.Writer(w)
	if o.Follow {
		out = flushWriter{w}
	}
	if o.Stdout != nil {
		o.Stdout = out
	}
	if o.Stderr != nil {
		o.Stderr = out
	}
	if err := ReadLogs(r.Context(), path, o, running); err != nil && r.Context().Err() == nil {
		a.log.Warn("read container log", "pod", v.Namespace+"/"+v.Name, "container", c.Name, "err", err)
	}
}

// parseLogQuery reads PodLogOptions from a query. Stdout and Stderr are set to io.Discard for
// the streams asked for (the caller points them at the response).
func parseLogQuery(r *http.Request, now time.Time) (o LogOptions, previous bool, err error) {
	q := r.URL.Query()
	boolean := func(name string) bool {
		b, perr := strconv.ParseBool(q.Get(name))
		if q.Has(name) && perr != nil && err == nil {
			err = fmt.Errorf("%s: %w", name, perr)
		}
		return b
	}
	integer := func(name string, def int64) int64 {
		if !q.Has(name) {
			return def
		}
		n, perr := strconv.ParseInt(q.Get(name), 10, 64)
		if (perr != nil || n < 0) && err == nil {
			err = fmt.Errorf("%s must be a non-negative integer", name)
		}
		return n
	}
	o.Follow, o.Timestamps, previous = boolean("follow"), boolean("timestamps"), boolean("previous")
	o.TailLines, o.LimitBytes = integer("tailLines", -1), integer("limitBytes", 0)
	if s := integer("sinceSeconds", 0); s > 0 {
		o.Since = now.Add(-time.Duration(s) * time.Second)
	}
	if q.Has("sinceTime") {
		t, perr := time.Parse(time.RFC3339, q.Get("sinceTime"))
		if perr != nil && err == nil {
			err = fmt.Errorf("sinceTime: %w", perr)
		}
		o.Since = t
	}
	switch strings.ToLower(q.Get("stream")) {
	case "", "all":
		o.Stdout, o.Stderr = io.Discard, io.Discard
	case "stdout":
		o.Stdout = io.Discard
	case "stderr":
		o.Stderr = io.Discard
	default:
		err = errors.Join(err, fmt.Errorf("stream must be All, Stdout or Stderr"))
	}
	return o, previous, err
}

// flushWriter sends every write at once, so that a follower sees lines as they come.
type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = http.NewResponseController(f.w).Flush()
	}
	return n, err
}
