//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// kubectlRun runs the lab's kubectl and returns its combined output and exit code.
func kubectlRun(t testing.TB, stdin string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := kubectlCmd(ctx, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	case err != nil:
		t.Fatalf("kubectl %v: %v", args, err)
	}
	return string(out), 0
}

// TestLabKubectl drives the lab with the real kubectl, as a user learning the mesh would:
// exec (pipes and a terminal, exit codes, the container's user, directory and programs), logs
// (tail, timestamps, previous, follow), port-forward, and the kubelet API's own authentication
// and authorization.
func TestLabKubectl(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cs := client(t)
	ns := newNamespace(t, cs, "kubectl")
	apply(t, ns, []byte(`
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 1000}
  containers:
  - name: echo
    image: ambient/echo
    args: ["-http=:8080", "-tcp=:19090"]
    workingDir: /tmp
    env: [{name: GREETING, value: hello-from-env}]
    readinessProbe:
      httpGet: {path: /, port: 8080}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  containers:
  - name: c
    image: ambient/client
    command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo line $i; echo err $i >&2; sleep 0.1; done"]
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: c
    image: ambient/client
    command: ["sh", "-c", "echo run at $(date +%s%N); exit 3"]
`))
	for _, pod := range []string{"web", "talker"} {
		eventually(t, 60*time.Second, pod+" ready", func() bool {
			p, err := cs.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
			return err == nil && podReady(p)
		})
	}
	k := func(args ...string) []string { return append([]string{"-n", ns}, args...) }

	t.Run("exec", func(t *testing.T) {
		out, code := kubectlRun(t, "", k("exec", "web", "--", "sh", "-c", "id -u; id -g; pwd; hostname; echo $GREETING; grep CapEff /proc/self/status")...)
		if want := "1000\n1000\n/tmp\nweb\nhello-from-env\nCapEff:\t0000000000000000\n"; code != 0 || out != want {
			t.Errorf("exec: code %d, output %q, want %q", code, out, want)
		}
		if out, code := kubectlRun(t, "", k("exec", "web", "--", "sh", "-c", "echo to-stderr >&2; exit 7")...); code != 7 || !strings.Contains(out, "to-stderr") {
			t.Errorf("exit code %d (want 7), output %q", code, out)
		}
		if out, code := kubectlRun(t, "piped through\n", k("exec", "-i", "web", "--", "cat")...); code != 0 || out != "piped through\n" {
			t.Errorf("stdin: code %d, output %q", code, out)
		}
		// A command the image ships (the lab's client program), talking to the pod's own port.
		if out, code := kubectlRun(t, "", k("exec", "web", "--", "client", "http", "http://localhost:8080/")...); code != 0 || !strings.Contains(out, `"host":"localhost:8080"`) {
			t.Errorf("image program: code %d, output %q", code, out)
		}
		if out, code := kubectlRun(t, "", k("exec", "web", "--", "no-such-program")...); code == 0 || !strings.Contains(out, "not found") {
			t.Errorf("a missing program: code %d, output %q", code, out)
		}
	})

	t.Run("exec with a terminal", func(t *testing.T) {
		cmd := kubectlCmd(ctx, k("exec", "-it", "web", "--", "sh", "-c", "tty; stty size; exit 5")...)
		term, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 33, Cols: 101})
		if err != nil {
			t.Fatal(err)
		}
		defer term.Close()
		var out bytes.Buffer
		copied := make(chan struct{})
		go func() { _, _ = io.Copy(&out, term); close(copied) }()
		err = cmd.Wait()
		term.Close()
		<-copied
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 5 {
			t.Errorf("exit: %v, want code 5; output %q", err, out.String())
		}
		if s := out.String(); !strings.Contains(s, "/dev/pts/") || !strings.Contains(s, "33 101") {
			t.Errorf("not a terminal of the client's size: %q", s)
		}
	})

	t.Run("logs", func(t *testing.T) {
		eventually(t, 30*time.Second, "talker said 10 lines", func() bool {
			out, _ := kubectlRun(t, "", k("logs", "talker")...)
			return strings.Contains(out, "line 10\n") && strings.Contains(out, "err 10\n")
		})
		out, code := kubectlRun(t, "", k("logs", "talker", "--tail=1", "--timestamps")...)
		if !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z (line|err) \d+\n$`).MatchString(out) || code != 0 {
			t.Errorf("--tail=1 --timestamps: %q", out)
		}
		// The file only grows (no rotation at this rate): a limited read is a prefix of a later full one.
		limited, _ := kubectlRun(t, "", k("logs", "talker", "--limit-bytes=7")...)
		if full, _ := kubectlRun(t, "", k("logs", "talker")...); len(limited) != 7 || !strings.HasPrefix(full, limited) {
			t.Errorf("--limit-bytes=7: %q", limited)
		}
		eventually(t, 60*time.Second, "crasher restarted", func() bool {
			p, err := cs.CoreV1().Pods(ns).Get(ctx, "crasher", metav1.GetOptions{})
			return err == nil && len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 1
		})
		prev, code := kubectlRun(t, "", k("logs", "crasher", "--previous")...)
		if code != 0 || !strings.HasPrefix(prev, "run at ") {
			t.Errorf("--previous: code %d, %q", code, prev)
		}
		if out, _ := kubectlRun(t, "", k("logs", "web", "--previous")...); !strings.Contains(out, "not found") {
			t.Errorf("--previous of a container never restarted: %q", out)
		}

		// Follow: lines written after kubectl started arrive while it runs.
		fctx, stop := context.WithCancel(ctx)
		defer stop()
		f := kubectlCmd(fctx, k("logs", "-f", "talker", "--tail=1")...)
		r, err := f.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { stop(); _ = f.Wait() }()
		sc := bufio.NewScanner(r)
		first := -1
		for sc.Scan() {
			var n int
			if _, err := fmt.Sscanf(sc.Text(), "line %d", &n); err != nil {
				continue
			}
			if first < 0 {
				first = n
			} else if n >= first+20 {
				break // twenty new lines, about two seconds of the talker's life
			}
		}
		if first < 0 || sc.Err() != nil {
			t.Errorf("logs -f ended without following: first %d, err %v", first, sc.Err())
		}
	})

	t.Run("attach and lab logs", func(t *testing.T) {
		// attach: the container's output from now on, so only lines the talker writes after it.
		actx, stop := context.WithCancel(ctx)
		defer stop()
		a := kubectlCmd(actx, k("attach", "talker", "-c", "c")...)
		r, err := a.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { stop(); _ = a.Wait() }()
		sc := bufio.NewScanner(r)
		seen := 0
		for seen < 5 && sc.Scan() {
			if strings.HasPrefix(sc.Text(), "line ") {
				seen++
			}
		}
		if seen < 5 {
			t.Errorf("attach ended after %d lines: %v", seen, sc.Err())
		}
		// The shortcut without kubectl.
		out, err := exec.CommandContext(ctx, filepath.Join(labCfg.BinDir, "lab"), "logs", ns+"/talker", "-c", "c").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "line 1\n") && !strings.HasPrefix(string(out), "err 1\n") {
			t.Errorf("lab logs: %v: %.100q", err, out)
		}
	})

	t.Run("port-forward", func(t *testing.T) {
		pctx, stop := context.WithCancel(ctx)
		defer stop()
		pf := kubectlCmd(pctx, k("port-forward", "pod/web", ":8080")...)
		r, err := pf.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := pf.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { stop(); _ = pf.Wait() }()
		sc := bufio.NewScanner(r)
		re := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 8080`)
		port := 0
		for port == 0 && sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				port, _ = strconv.Atoi(m[1])
			}
		}
		if port == 0 {
			t.Fatalf("kubectl port-forward printed no local port (err %v)", sc.Err())
		}
		for i := range 3 { // several connections over one port-forward session
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
			if err != nil {
				t.Fatalf("request %d through port-forward: %v", i, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(body), `"method":"GET"`) {
				t.Errorf("request %d: %d %q", i, resp.StatusCode, body)
			}
		}
	})

	t.Run("kubelet API access", func(t *testing.T) {
		web, err := cs.CoreV1().Pods(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		node, err := cs.CoreV1().Nodes().Get(ctx, web.Spec.NodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if node.Status.DaemonEndpoints.KubeletEndpoint.Port != 10250 {
			t.Errorf("node %s: kubelet endpoint port %d", node.Name, node.Status.DaemonEndpoints.KubeletEndpoint.Port)
		}
		if out, _ := kubectlRun(t, "", "get", "--raw", "/api/v1/nodes/"+node.Name+"/proxy/healthz"); out != "ok" {
			t.Errorf("healthz through the API server: %q", out)
		}
		// Straight to the kubelet from a pod: no credentials, then a token with no rights.
		url := "https://" + web.Status.HostIP + ":10250/healthz"
		if out := execIn(t, ns, "talker", "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", url); out != "401" {
			t.Errorf("anonymous request: %s, want 401", out)
		}
		tok := execIn(t, ns, "talker", "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token")
		out := execIn(t, ns, "talker", "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer "+tok,
			"https://"+web.Status.HostIP+":10250/exec/"+ns+"/web/echo?command=id&output=1")
		if out != "403" {
			t.Errorf("exec with a token that has no nodes/proxy rights: %s, want 403", out)
		}
	})
}
