package controller

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	istioscheme "istio.io/client-go/pkg/clientset/versioned/scheme"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kubefake "k8s.io/client-go/kubernetes/fake"
	kubescheme "k8s.io/client-go/kubernetes/scheme"
	gwfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"
	gwscheme "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/scheme"

	"github.com/ambient-mesh/ambient/istiod-lite/model"
	"github.com/ambient-mesh/ambient/istiod-lite/waypoint"
)

// TestTranslateGolden feeds each testdata/*.yaml through fake clientsets, the informers and the
// model, and compares the snapshot with testdata/*.golden.json. UPDATE_GOLDEN=1 rewrites them.
func TestTranslateGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no test inputs: %v", err)
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			ctl := NewFake(t, readObjects(t, in)...)
			input, err := ctl.Input()
			if err != nil {
				t.Fatal(err)
			}
			got := render(t, model.Translate(model.DefaultConfig(), input))
			golden := filepath.Join("testdata", name+".golden.json")
			if os.Getenv("UPDATE_GOLDEN") != "" {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with UPDATE_GOLDEN=1 to create)", err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("snapshot differs from %s (-want +got; UPDATE_GOLDEN=1 to accept):\n%s", golden, diff)
			}
		})
	}
}

// NewFake returns a controller over fake clientsets holding objs, with synced caches. Objects are
// routed to the clientset of their API group.
func NewFake(t *testing.T, objs ...runtime.Object) *Controller {
	t.Helper()
	var kube, istio, gw []runtime.Object
	for _, o := range objs {
		gvk := o.GetObjectKind().GroupVersionKind()
		switch gvk.Group {
		case "security.istio.io":
			istio = append(istio, o)
		case "gateway.networking.k8s.io":
			gw = append(gw, o)
		default:
			kube = append(kube, o)
		}
	}
	// The fake's tracker guesses resource names by naive pluralisation ("gatewaies"), which the
	// typed client never asks for; file Gateway API objects under their real resource names.
	gwClient := gwfake.NewSimpleClientset()
	for _, o := range gw {
		gvk := o.GetObjectKind().GroupVersionKind()
		gvr := gvk.GroupVersion().WithResource(strings.ToLower(gvk.Kind) + "s")
		if err := gwClient.Tracker().Create(gvr, o, o.(metav1.Object).GetNamespace()); err != nil {
			t.Fatal(err)
		}
	}
	return runFake(t, Clients{
		Kube:    kubefake.NewClientset(kube...),
		Istio:   istiofake.NewSimpleClientset(istio...),
		Gateway: gwClient,
	})
}

// runFake runs a controller over clients until the test ends, and waits for its caches.
func runFake(t *testing.T, clients Clients) *Controller {
	t.Helper()
	ctl, err := New(slog.New(slog.DiscardHandler), clients)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = ctl.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-ctl.cachesSynced: // Run's signal for the initial lists is pending by then
	case <-time.After(10 * time.Second):
		t.Fatal("caches did not sync")
	}
	return ctl
}

func readObjects(t *testing.T, path string) []runtime.Object {
	t.Helper()
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{kubescheme.AddToScheme, istioscheme.AddToScheme, gwscheme.AddToScheme} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	dec := serializer.NewCodecFactory(s).UniversalDeserializer()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var out []runtime.Object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := dec.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, obj)
	}
}

// render prints a snapshot as stable, indented JSON.
func render(t *testing.T, snap *model.Snapshot) []byte {
	t.Helper()
	enc := func(m proto.Message) json.RawMessage {
		b, err := protojson.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var c bytes.Buffer
		if err := json.Compact(&c, b); err != nil { // protojson's spacing is deliberately unstable
			t.Fatal(err)
		}
		return c.Bytes()
	}
	var problems []string
	for _, p := range snap.Problems {
		problems = append(problems, p.String())
	}
	doc := map[string]any{"problems": problems}
	ws, ss, as := map[string]json.RawMessage{}, map[string]json.RawMessage{}, map[string]json.RawMessage{}
	for k, v := range snap.Workloads {
		ws[k] = enc(v)
	}
	for k, v := range snap.Services {
		ss[k] = enc(v)
	}
	for k, v := range snap.Authorizations {
		as[k] = enc(v)
	}
	doc["workloads"], doc["services"], doc["authorizations"] = ws, ss, as
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestMain(m *testing.M) {
	// istio's fake clientset predates watch-list streaming and never sends the initial-events
	// bookmark the streaming reflector waits for; plain list+watch works with every fake.
	os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	// Informers must stop with Run. klog's flush daemon is process-wide.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"))
}

func TestPodsOnNodeAndChanges(t *testing.T) {
	ctl := NewFake(t, readObjects(t, "testdata/enrolment.yaml")...)
	<-ctl.Changed() // the initial sync signals once
	pods, err := ctl.PodsOnNode("node-b")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pods {
		names = append(names, p.Name)
	}
	sort.Strings(names)
	if diff := cmp.Diff([]string{"single", "web-pending"}, names); diff != "" {
		t.Errorf("pods on node-b (-want +got):\n%s", diff)
	}
}

// syncedController is a Controller without informers whose caches count as synced.
func syncedController() *Controller {
	c := &Controller{changed: make(chan struct{}, 1), cachesSynced: make(chan struct{})}
	close(c.cachesSynced)
	return c
}

// Nothing is pushed before every cache holds its initial list, however many changes the lists
// themselves signal: a partial translation could lack a DENY policy.
func TestDebounceWaitsForSync(t *testing.T) {
	c := &Controller{changed: make(chan struct{}, 1), cachesSynced: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := make(chan struct{}, 10)
	go c.Debounce(ctx, time.Millisecond, time.Millisecond, func() { calls <- struct{}{} })
	c.notify()
	select {
	case <-calls:
		t.Fatal("called before the caches synced")
	case <-time.After(50 * time.Millisecond):
	}
	close(c.cachesSynced)
	select {
	case <-calls:
	case <-time.After(5 * time.Second):
		t.Fatal("the change signalled during the initial list was lost")
	}
}

// A lone change is not delayed by the quiet period; one that follows closely is.
func TestDebounceLoneChange(t *testing.T) {
	ctl := syncedController()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := make(chan struct{}, 10)
	go ctl.Debounce(ctx, time.Hour, time.Hour, func() { calls <- struct{}{} })
	ctl.notify()
	select {
	case <-calls:
	case <-time.After(5 * time.Second):
		t.Fatal("a lone change waited for the quiet period")
	}
	ctl.notify()
	select {
	case <-calls:
		t.Fatal("a change right after a call was not coalesced")
	case <-time.After(100 * time.Millisecond):
	}
}

// A change after a long call, with no other change close before it, is lone: handled at once,
// not after the quiet period (as it was when the quiet period counted from the last call).
func TestDebounceChangeAfterLongCall(t *testing.T) {
	ctl := syncedController()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const quiet = time.Second
	calls := make(chan time.Time, 10)
	n := 0
	go ctl.Debounce(ctx, quiet, 10*quiet, func() {
		if n++; n == 1 {
			time.Sleep(quiet + quiet/10) // a long push
		}
		calls <- time.Now()
	})
	ctl.notify()
	<-calls
	sent := time.Now()
	ctl.notify()
	select {
	case at := <-calls:
		if wait := at.Sub(sent); wait > quiet*7/10 {
			t.Errorf("a lone change after a long call waited %v (quiet %v)", wait, quiet)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no call for the change")
	}
}

// Changes that keep coming while calls take longer than the quiet period are still coalesced:
// a change signalled during a call is part of the burst, not a lone change.
func TestDebounceChurnWithLongCalls(t *testing.T) {
	ctl := syncedController()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const quiet, maxDelay, call, churn = 100 * time.Millisecond, 500 * time.Millisecond, 150 * time.Millisecond, 2 * time.Second
	var calls atomic.Int32
	go ctl.Debounce(ctx, quiet, maxDelay, func() {
		calls.Add(1)
		time.Sleep(call)
	})
	for end := time.Now().Add(churn); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		ctl.notify()
	}
	// About churn/(maxDelay+call) calls when changes coalesce; one per call (churn/call) when
	// every change signalled during a call counted as lone.
	if n := calls.Load(); n > 8 {
		t.Errorf("%d calls in %v of changes every 10 ms with calls of %v: not coalesced (quiet %v, max %v)", n, churn, call, quiet, maxDelay)
	}
}

func TestDebounce(t *testing.T) {
	ctl := syncedController()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := make(chan time.Time, 10)
	// The quiet period is far longer than the gaps of the burst below, even on a loaded machine.
	const quiet, maxDelay = 300 * time.Millisecond, time.Second
	go ctl.Debounce(ctx, quiet, maxDelay, func() { calls <- time.Now() })
	// A burst of changes closer together than the quiet period: the first is handled at once,
	// the rest coalesced into one more call.
	ctl.notify()
	for i := range 2 {
		select {
		case <-calls:
		case <-time.After(10 * time.Second):
			t.Fatalf("%d calls after a burst, want 2", i)
		}
		if i == 0 {
			for range 4 {
				ctl.notify()
			}
		}
	}
	select {
	case <-calls:
		t.Fatal("a burst produced more than two calls")
	case <-time.After(2 * quiet):
	}
	// A steady stream of changes, each within the quiet period of the one before, still produces
	// calls: at the latest maxDelay after the first of them.
	stop := time.After(5 * maxDelay)
	n := 0
loop:
	for {
		select {
		case <-stop:
			break loop
		case <-calls:
			n++
			if n == 2 {
				break loop
			}
		case <-time.After(quiet / 10):
			ctl.notify()
		}
	}
	if n < 2 {
		t.Errorf("a steady stream of changes starved calls: %d in %v", n, 5*maxDelay)
	}
}

// A node's heartbeat (status) is not a change; a change of its topology labels is.
func TestNodeChanges(t *testing.T) {
	kube := kubefake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{model.LabelZone: "a"}}})
	ctl := runFake(t, Clients{Kube: kube, Istio: istiofake.NewSimpleClientset(), Gateway: gwfake.NewSimpleClientset()})
	// changed waits up to d for a change signal.
	changed := func(d time.Duration) bool {
		select {
		case <-ctl.Changed():
			return true
		case <-time.After(d):
			return false
		}
	}
	for changed(300 * time.Millisecond) { // the initial list and sync
	}
	n, err := kube.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}
	n.ResourceVersion = "2"
	if _, err := kube.CoreV1().Nodes().UpdateStatus(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if changed(300 * time.Millisecond) {
		t.Error("a node status update signalled a change")
	}
	n.Labels[model.LabelZone] = "b"
	n.ResourceVersion = "3"
	if _, err := kube.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if !changed(10 * time.Second) {
		t.Error("a node's new zone did not signal a change")
	}
	in, err := ctl.Input()
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Nodes) != 1 || in.Nodes[0].Labels[model.LabelZone] != "b" || len(in.Nodes[0].Status.Conditions) != 0 {
		t.Errorf("cached nodes %+v: want n1 in zone b, without status", in.Nodes)
	}
}

// Objects of a waypoint changed or deleted by someone else are reported for repair; status-only
// updates are not.
func TestWaypointRepairs(t *testing.T) {
	labels := map[string]string{waypoint.GatewayNameLabel: "wp"}
	kube := kubefake.NewClientset(
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "wp", Labels: labels, Generation: 1}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "wp", Labels: labels}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "unrelated"}},
	)
	ctl := runFake(t, Clients{Kube: kube, Istio: istiofake.NewSimpleClientset(), Gateway: gwfake.NewSimpleClientset()})
	ctx := context.Background()
	wait := func(want []string) {
		t.Helper()
		// Waiting for nothing to happen needs a bound: half a second, in which the fake's watch
		// delivers the updates above.
		deadline := time.Now().Add(5 * time.Second)
		if len(want) == 0 {
			deadline = time.Now().Add(500 * time.Millisecond)
		}
		var got []string
		for time.Now().Before(deadline) {
			got = append(got, ctl.TakeRepairs()...)
			if len(want) > 0 && cmp.Equal(got, want) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !cmp.Equal(got, want, cmpopts.EquateEmpty()) {
			t.Fatalf("repairs %v, want %v", got, want)
		}
	}
	d, err := kube.AppsV1().Deployments("shop").Get(ctx, "wp", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.Status.ReadyReplicas = 1
	d.ResourceVersion = "2"
	if _, err := kube.AppsV1().Deployments("shop").UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().ServiceAccounts("shop").Update(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Namespace: "shop", Name: "unrelated", ResourceVersion: "3"}}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait(nil)
	if err := kube.CoreV1().ServiceAccounts("shop").Delete(ctx, "wp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait([]string{"shop/wp"})
}
