package server

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	secapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	secv1 "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"
	gwfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	"github.com/ambient-mesh/ambient/internal/testutil"
	"github.com/ambient-mesh/ambient/istiod-lite/model"
)

// logLines is a slog handler that keeps each record's message and attributes as one line.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) Enabled(context.Context, slog.Level) bool { return true }
func (l *logLines) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logLines) WithGroup(string) slog.Handler            { return l }
func (l *logLines) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool { b.WriteString(" " + a.Key + "=" + a.Value.String()); return true })
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
	return nil
}

func (l *logLines) count(subs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

// TestProblemsSurfaced: a policy istiod-lite cannot translate as written is logged once (by every
// replica, from its push), and the leader writes an Event on it and its ZtunnelAccepted condition.
func TestProblemsSurfaced(t *testing.T) {
	kube := kubefake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop",
		Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}})
	istio := istiofake.NewSimpleClientset(&secv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "get-only", Generation: 1},
		Spec: secapi.AuthorizationPolicy{Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "web"}},
			Rules: []*secapi.Rule{{To: []*secapi.Rule_To{{Operation: &secapi.Operation{Methods: []string{"GET"}}}}}}},
	})
	cfg := Default()
	cfg.GRPCAddr, cfg.AdminAddr, cfg.MetricsAddr, cfg.ReadyAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.PodName = "istiod-lite-0"
	cfg.DebounceQuiet, cfg.DebounceMax = 10*time.Millisecond, 100*time.Millisecond
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logs := &logLines{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, slog.New(logs), cfg, fakeClients(kube, istio, gwfake.NewSimpleClientset()), nil)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	testutil.Eventually(t, 10*time.Second, "the ZtunnelAccepted condition", func() bool {
		ap, err := istio.SecurityV1().AuthorizationPolicies("shop").Get(ctx, "get-only", metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range ap.Status.GetConditions() {
			if c.Type == model.ConditionZtunnelAccepted && c.Status == "True" && c.Reason == model.ReasonUnsupportedValue &&
				strings.Contains(c.Message, "methods") {
				return true
			}
		}
		return false
	})
	testutil.Eventually(t, 10*time.Second, "an Event on the policy", func() bool {
		evs, err := kube.CoreV1().Events("shop").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Kind == "AuthorizationPolicy" && e.InvolvedObject.Name == "get-only" && e.Type == corev1.EventTypeWarning {
				return true
			}
		}
		return false
	})
	// The condition written changed the policy (as the watch sees it): pushes followed, and the
	// problem, unchanged, was not logged again.
	if n := logs.count("not translated as written", "kind=AuthorizationPolicy", "namespace=shop", "name=get-only", "methods"); n != 1 {
		t.Errorf("problem logged %d times, want once", n)
	}
}
