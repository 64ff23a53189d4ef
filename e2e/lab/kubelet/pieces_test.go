package kubelet

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestBackoffAndRestartPolicy(t *testing.T) {
	got := []time.Duration{backoff(0), backoff(1), backoff(2), backoff(5), backoff(40)}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 30 * time.Second, 30 * time.Second}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("backoff (-want +got):\n%s", d)
	}
	for _, tt := range []struct {
		policy corev1.RestartPolicy
		code   int
		want   bool
	}{
		{corev1.RestartPolicyAlways, 0, true}, {corev1.RestartPolicyAlways, 1, true},
		{corev1.RestartPolicyOnFailure, 0, false}, {corev1.RestartPolicyOnFailure, 2, true},
		{corev1.RestartPolicyNever, 1, false},
	} {
		c := &container{lastExitCode: tt.code}
		if got := c.shouldRestart(tt.policy); got != tt.want {
			t.Errorf("%s exit %d: restart = %v, want %v", tt.policy, tt.code, got, tt.want)
		}
	}
}

func TestWriteItems(t *testing.T) {
	dir := t.TempDir()
	data := map[string][]byte{"a": []byte("1"), "b": []byte("2")}
	if err := writeItems(filepath.Join(dir, "all"), data, nil); err != nil {
		t.Fatal(err)
	}
	if err := writeItems(filepath.Join(dir, "some"), data, []corev1.KeyToPath{{Key: "b", Path: "sub/../../x/b.txt"}}); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{"all/a": "1", "all/b": "2", "some/x/b.txt": "2"} {
		b, err := os.ReadFile(filepath.Join(dir, path))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", path, b, err, want)
		}
	}
	if err := writeItems(filepath.Join(dir, "bad"), data, []corev1.KeyToPath{{Key: "missing", Path: "m"}}); err == nil {
		t.Error("missing key: want error")
	}
}

func TestProbes(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bad" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	host, portStr, _ := net.SplitHostPort(srv.Listener.Addr().String())
	port, _ := strconv.Atoi(portStr)
	c := &corev1.Container{Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: int32(port)}}}
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	for _, tt := range []struct {
		name  string
		probe corev1.ProbeHandler
		ok    bool
	}{
		{"http ok by name", corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ok", Port: intstr.FromString("http")}}, true},
		{"http 503", corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/bad", Port: intstr.FromInt32(int32(port))}}, false},
		{"unknown named port", corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromString("nope")}}, false},
		{"tcp open", corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(int32(port))}}, true},
		{"tcp closed", corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(int32(closedPort))}}, false},
		{"exec unsupported", corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}, false},
	} {
		err := runProbe(context.Background(), &corev1.Probe{ProbeHandler: tt.probe}, host, c)
		if (err == nil) != tt.ok {
			t.Errorf("%s: err = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestPodStatus(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "a", Image: "ambient/echo"}, {Name: "b", Image: "ambient/client"}}},
	}
	w := &podWorker{k: &Kubelet{cfg: Config{NodeIP: "10.0.0.1"}}, pod: pod}
	st := w.status()
	if st.Phase != corev1.PodPending || st.ContainerStatuses[0].State.Waiting == nil || st.ContainerStatuses[0].State.Waiting.Reason != "ContainerCreating" {
		t.Errorf("before sandbox: %+v", st)
	}
	w.sb = &sandbox{podIP: "10.1.0.2"}
	w.ctrs = []*container{{spec: pod.Spec.Containers[0], running: true, ready: true, started: time.Now()},
		{spec: pod.Spec.Containers[1], running: true, ready: false, restarts: 2, started: time.Now()}}
	st = w.status()
	if st.Phase != corev1.PodRunning || st.PodIP != "10.1.0.2" || st.ContainerStatuses[1].RestartCount != 2 {
		t.Errorf("running: %+v", st)
	}
	for _, c := range st.Conditions {
		if c.Type == corev1.PodReady && c.Status != corev1.ConditionFalse {
			t.Errorf("one container not ready: pod Ready = %s", c.Status)
		}
	}
	w.ctrs[1].ready = true
	for _, c := range w.status().Conditions {
		if c.Type == corev1.PodReady && c.Status != corev1.ConditionTrue {
			t.Errorf("all ready: pod Ready = %s", c.Status)
		}
	}
	w.ctrs[0].running, w.ctrs[0].terminated = false, &corev1.ContainerStateTerminated{ExitCode: 0}
	w.ctrs[1].running, w.ctrs[1].terminated = false, &corev1.ContainerStateTerminated{ExitCode: 3}
	if st := w.status(); st.Phase != corev1.PodFailed {
		t.Errorf("one failed, none restarting: phase %s", st.Phase)
	}
	w.ctrs[1].terminated.ExitCode = 0
	if st := w.status(); st.Phase != corev1.PodSucceeded {
		t.Errorf("all succeeded: phase %s", st.Phase)
	}
}

func TestRunAs(t *testing.T) {
	id := func(n int64) *int64 { return &n }
	for _, tc := range []struct {
		name string
		pod  *corev1.PodSecurityContext
		ctr  *corev1.SecurityContext
		want *User
	}{
		{name: "nothing set: root, as the images are", want: nil},
		{name: "pod's user, group 0 by default", pod: &corev1.PodSecurityContext{RunAsUser: id(1000)}, want: &User{UID: 1000}},
		{name: "container overrides the pod", pod: &corev1.PodSecurityContext{RunAsUser: id(1000), RunAsGroup: id(2000)},
			ctr: &corev1.SecurityContext{RunAsUser: id(1001)}, want: &User{UID: 1001, GID: 2000}},
		{name: "supplemental groups and fsGroup", pod: &corev1.PodSecurityContext{RunAsUser: id(7), SupplementalGroups: []int64{5, 6}, FSGroup: id(9)},
			want: &User{UID: 7, Groups: []int{5, 6, 9}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: tc.pod}}
			got := runAs(pod, &corev1.Container{SecurityContext: tc.ctr})
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("runAs (-want +got):\n%s", diff)
			}
		})
	}
}
