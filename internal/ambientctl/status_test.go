package ambientctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/api/status"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var testNow = time.Date(2026, 12, 5, 9, 0, 0, 0, time.UTC)

// cluster is a mesh as the fake API server holds it, with the components' status documents.
type cluster struct {
	objs     []runtime.Object
	statuses map[string]any // pod name -> status document
	docs     map[string]any // pod name + path -> another document
}

func readyPod(ns, name, node string, labels, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, Annotations: annotations},
		Spec:       corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{Phase: corev1.PodRunning,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

// healthy is a two-node mesh with one enrolled namespace, everything well.
func healthy() *cluster {
	c := &cluster{statuses: map[string]any{}, docs: map[string]any{}}
	c.objs = append(c.objs,
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: SystemNamespace, Name: istiodName},
			Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](1)}, Status: appsv1.DeploymentStatus{ReadyReplicas: 1}},
		&coordv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: SystemNamespace, Name: istiodLease},
			Spec: coordv1.LeaseSpec{HolderIdentity: ptr.To("istiod-lite-0")}},
		readyPod(SystemNamespace, "istiod-lite-0", "node-1", map[string]string{"app": istiodName}, nil),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo", Labels: map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "other"}},
		readyPod("other", "outside", "node-1", nil, nil),
	)
	c.statuses["istiod-lite-0"] = status.Istiod{Version: "v1.0.0", RootNotAfter: testNow.Add(3650 * 24 * time.Hour),
		Proxies: []status.Proxy{{ID: "ztunnel-node-1", Role: "ztunnel", Node: "node-1", UpToDate: true, ConnectedAt: testNow.Add(-time.Hour)},
			{ID: "ztunnel-node-2", Role: "ztunnel", Node: "node-2", UpToDate: true, ConnectedAt: testNow.Add(-time.Hour)}}}
	for i, node := range []string{"node-1", "node-2"} {
		c.objs = append(c.objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}},
			readyPod(SystemNamespace, "ztunnel-"+node, node, map[string]string{"app": ztunnelApp}, nil),
			readyPod(SystemNamespace, "ambient-agent-"+node, node, map[string]string{"app": agentApp}, nil),
			readyPod("demo", fmt.Sprintf("app-%d", i), node, nil, map[string]string{mesh.AnnotationRedirection: mesh.RedirectionEnabled}))
		c.statuses["ztunnel-"+node] = status.Ztunnel{Version: "v1.0.0", Ready: true,
			XDS:  status.XDS{Connected: true, Types: map[string]status.XDSType{"workload": {Synced: true, Resources: 5}}},
			Pods: []status.Pod{{Namespace: "demo", Name: fmt.Sprintf("app-%d", i), ServiceAccount: "default", IPs: []string{fmt.Sprintf("10.234.%d.5", i+1)}}},
			Certificates: []status.Certificate{{Identity: "spiffe://cluster.local/ns/demo/sa/default", State: "valid",
				NotAfter: testNow.Add(time.Duration(20+i) * time.Hour)}},
			Workloads: 5, Services: 2}
		c.docs["ztunnel-"+node+status.WorkloadsPath] = []status.Workload{
			{Namespace: "demo", Name: "app-0", Node: "node-1", IPs: []string{"10.234.1.5"}, Identity: "spiffe://cluster.local/ns/demo/sa/default", Protocol: "HBONE", Healthy: true},
			{Namespace: "demo", Name: "app-1", Node: "node-2", IPs: []string{"10.234.2.5"}, Identity: "spiffe://cluster.local/ns/demo/sa/default", Protocol: "HBONE", Healthy: true},
			{Namespace: "other", Name: "outside", Node: "node-1", IPs: []string{"10.234.1.9"}, Protocol: "TCP", Healthy: true}}
		c.docs["ztunnel-"+node+status.ServicesPath] = []status.Service{
			{Namespace: "demo", Hostname: "app.demo.svc.cluster.local", VIPs: []string{"10.235.0.20"}, Ports: []string{"80->http"}, Endpoints: 2}}
	}
	return c
}

func (c *cluster) clients() (kubernetes.Interface, ProxyGet, error) {
	cs := fake.NewClientset(c.objs...)
	get := func(_ context.Context, _, pod string, port int, path string) ([]byte, error) {
		st, ok := c.statuses[pod]
		if path != status.Path {
			st, ok = c.docs[pod+path]
		}
		if !ok || port != mesh.PortMetrics {
			return nil, errors.New("the server could not find the requested resource")
		}
		return json.Marshal(st)
	}
	return cs, get, nil
}

func run(t *testing.T, c *cluster, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	o := &options{out: &out, errOut: &errOut, now: func() time.Time { return testNow }, clients: c.clients}
	root := newRoot(o)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestStatusGolden(t *testing.T) {
	for _, format := range []string{"json", "yaml", "table"} {
		t.Run(format, func(t *testing.T) {
			out, err := run(t, healthy(), "status", "-o", format)
			if err != nil {
				t.Fatalf("a healthy mesh: %v\n%s", err, out)
			}
			golden(t, "status-healthy."+format, out)
		})
	}
}

func TestConfigCommands(t *testing.T) {
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"workloads.table", []string{"workloads"}},
		{"workloads-demo.json", []string{"workloads", "-n", "demo", "-o", "json"}},
		{"services.yaml", []string{"services", "--node", "node-2", "-o", "yaml"}},
		{"certs.table", []string{"certs"}},
		{"certs.json", []string{"certs", "-o", "json"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			out, err := run(t, healthy(), tc.args...)
			if err != nil {
				t.Fatalf("%v: %v\n%s", tc.args, err, out)
			}
			golden(t, tc.golden, out)
		})
	}
	if _, err := run(t, healthy(), "workloads", "--node", "node-9"); err == nil || !strings.Contains(err.Error(), "no ready ztunnel on node node-9") {
		t.Errorf("a node without ztunnel: %v", err)
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to write it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file (run with -update after checking):\n%s", name, got)
	}
}

func TestStatusProblems(t *testing.T) {
	find := func(c *cluster, name string) runtime.Object {
		for _, o := range c.objs {
			if m, ok := o.(metav1.Object); ok && m.GetName() == name {
				return o
			}
		}
		t.Fatalf("no object %s", name)
		return nil
	}
	for _, tc := range []struct {
		name   string
		break_ func(c *cluster)
		object string // the problem's object, a substring
		cause  string // a substring of its cause
	}{
		{"ztunnel down on a node", func(c *cluster) {
			z := find(c, "ztunnel-node-2").(*corev1.Pod)
			z.Status.Conditions[0].Status = corev1.ConditionFalse
		}, "pod/ztunnel-node-2", "not ready"},
		{"no ztunnel on a node", func(c *cluster) {
			find(c, "ztunnel-node-2").(*corev1.Pod).Spec.NodeName = "node-1"
		}, "node/node-2", "no ztunnel"},
		{"the agent down", func(c *cluster) {
			find(c, "ambient-agent-node-1").(*corev1.Pod).Status.Conditions[0].Status = corev1.ConditionFalse
		}, "pod/ambient-agent-node-1", "not ready"},
		{"a pod that could not be enrolled", func(c *cluster) {
			find(c, "app-1").(*corev1.Pod).Annotations[mesh.AnnotationRedirection] = mesh.RedirectionPending
			c.objs = append(c.objs, &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "app-1.1"},
				InvolvedObject: corev1.ObjectReference{Kind: "Pod", Name: "app-1", Namespace: "demo"}, Type: corev1.EventTypeWarning,
				Reason: "RedirectionFailed", Message: "no network namespace found"})
		}, "demo/pod/app-1", "not redirected"},
		{"istiod-lite down", func(c *cluster) {
			find(c, istiodName).(*appsv1.Deployment).Status.ReadyReplicas = 0
			find(c, "istiod-lite-0").(*corev1.Pod).Status.Conditions[0].Status = corev1.ConditionFalse
		}, "deployment/istiod-lite", "no ready replica"},
		{"istiod-lite not installed", func(c *cluster) {
			find(c, istiodName).(*appsv1.Deployment).Name = "something-else"
		}, "deployment/istiod-lite", "not installed"},
		{"a root certificate near expiry", func(c *cluster) {
			st := c.statuses["istiod-lite-0"].(status.Istiod)
			st.RootNotAfter = testNow.Add(10 * 24 * time.Hour)
			c.statuses["istiod-lite-0"] = st
		}, "istio-ca-secret", "expires"},
		{"a policy with a problem", func(c *cluster) {
			st := c.statuses["istiod-lite-0"].(status.Istiod)
			st.Problems = []status.Problem{{Kind: "AuthorizationPolicy", Namespace: "demo", Name: "deny-all", Reason: "UnsupportedValue",
				Message: "rules[0].to.operation.methods: L7 attributes need a waypoint; the rule is ignored"}}
			c.statuses["istiod-lite-0"] = st
		}, "demo/authorizationpolicy/deny-all", "need a waypoint"},
		{"a ztunnel cut off from istiod-lite", func(c *cluster) {
			st := c.statuses["ztunnel-node-1"].(status.Ztunnel)
			st.XDS.Connected = false
			c.statuses["ztunnel-node-1"] = st
		}, "pod/ztunnel-node-1", "not connected"},
		{"a certificate that could not be issued", func(c *cluster) {
			st := c.statuses["ztunnel-node-1"].(status.Ztunnel)
			st.Certificates = []status.Certificate{{Identity: "spiffe://cluster.local/ns/demo/sa/default", State: "pending", LastError: "CA unavailable"}}
			c.statuses["ztunnel-node-1"] = st
		}, "pod/ztunnel-node-1", "CA unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := healthy()
			tc.break_(c)
			out, err := run(t, c, "status", "-o", "json")
			if !errors.Is(err, ErrProblems) {
				t.Fatalf("exit: %v, want ErrProblems\n%s", err, out)
			}
			var r Report
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatal(err)
			}
			for _, p := range r.Problems {
				if strings.Contains(p.Object, tc.object) && strings.Contains(p.Cause, tc.cause) {
					if p.Hint == "" {
						t.Errorf("problem without a hint: %+v", p)
					}
					return
				}
			}
			t.Errorf("no problem on %q with cause %q in %+v", tc.object, tc.cause, r.Problems)
		})
	}
}

func TestEnroll(t *testing.T) {
	c := healthy()
	c.objs = append(c.objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}},
		readyPod("shop", "web", "node-1", nil, nil), readyPod("shop", "db", "node-2", nil, nil))
	cs, _, _ := c.clients()
	// A node agent stand-in: the fake API server has none. It redirects web, and cannot redirect db.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := cs.CoreV1().Namespaces().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	go func() {
		for ev := range w.ResultChan() {
			ns, ok := ev.Object.(*corev1.Namespace)
			if !ok || ns.Name != "shop" || ns.Labels[mesh.LabelDataplaneMode] != mesh.DataplaneModeAmbient {
				continue
			}
			for name, v := range map[string]string{"web": mesh.RedirectionEnabled, "db": mesh.RedirectionPending} {
				p, err := cs.CoreV1().Pods("shop").Get(ctx, name, metav1.GetOptions{})
				if err == nil {
					p.Annotations = map[string]string{mesh.AnnotationRedirection: v}
					_, _ = cs.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{})
				}
			}
		}
	}()
	var out bytes.Buffer
	o := &options{out: &out, errOut: &bytes.Buffer{}, now: time.Now,
		clients: func() (kubernetes.Interface, ProxyGet, error) { return cs, nil, nil }}
	root := newRoot(o)
	root.SetArgs([]string{"enroll", "shop", "-o", "json"})
	err = root.ExecuteContext(ctx)
	if !errors.Is(err, ErrProblems) {
		t.Fatalf("enroll with a pod that cannot join: %v, want ErrProblems\n%s", err, out.String())
	}
	var e Enrollment
	if err := json.Unmarshal(out.Bytes(), &e); err != nil {
		t.Fatal(err)
	}
	if strings.Join(e.Done, ",") != "web" || len(e.Failed) != 1 || e.Failed[0].Pod != "db" {
		t.Errorf("enrollment %+v: want web joined, db failed", e)
	}
	ns, _ := cs.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
	if ns.Labels[mesh.LabelDataplaneMode] != mesh.DataplaneModeAmbient {
		t.Errorf("namespace labels %v", ns.Labels)
	}
}
