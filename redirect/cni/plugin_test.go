package cni

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

type fakeCaller struct {
	got  []string
	reqs []PodRequest
	resp PodResponse
	err  error
}

func (f *fakeCaller) Call(_ context.Context, path string, req PodRequest) (PodResponse, error) {
	f.got = append(f.got, path)
	f.reqs = append(f.reqs, req)
	return f.resp, f.err
}

const stdin = `{"cniVersion":"1.0.0","name":"lab","type":"ambient-cni","agentSocket":"/var/run/ambient/cni.sock",
 "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/p"}],
  "ips":[{"address":"10.234.1.7/24","gateway":"10.234.1.1","interface":0}]}}`

const podArgs = "IgnoreUnknown=true;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_UID=u-1;K8S_POD_INFRA_CONTAINER_ID=c1"

func plugin(f *fakeCaller) (*Plugin, *[]types.Result) {
	var printed []types.Result
	return &Plugin{
		NewCaller: func(string) Caller { return f },
		Print:     func(r types.Result, _ string) error { printed = append(printed, r); return nil },
	}, &printed
}

func TestAdd(t *testing.T) {
	for _, tc := range []struct {
		name      string
		args      string
		agentErr  error
		wantCall  bool
		wantError string
	}{
		{"pod in the mesh, set up", podArgs, nil, true, ""},
		{"agent says no: the pod fails to start", podArgs, errors.New("ambient agent: set up redirection: attach: no such device"), true, "attach: no such device"},
		{"not a Kubernetes pod: passed through", "IgnoreUnknown=true", nil, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeCaller{err: tc.agentErr}
			p, printed := plugin(f)
			err := p.Add(&skel.CmdArgs{ContainerID: "c1", Netns: "/run/netns/p", IfName: "eth0", Args: tc.args, StdinData: []byte(stdin)})
			if tc.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantError) || !strings.Contains(err.Error(), "shop/web") {
					t.Fatalf("Add error = %v, want one naming the pod and %q", err, tc.wantError)
				}
				if len(*printed) != 0 {
					t.Error("a failed ADD printed a result")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (len(f.got) == 1) != tc.wantCall {
				t.Fatalf("agent calls = %v, want call %v", f.got, tc.wantCall)
			}
			if tc.wantCall {
				r := f.reqs[0]
				if f.got[0] != PathAdd || r.Namespace != "shop" || r.Name != "web" || r.UID != "u-1" || r.Netns != "/run/netns/p" ||
					len(r.IPs) != 1 || r.IPs[0] != "10.234.1.7" {
					t.Errorf("request = %s %+v", f.got[0], r)
				}
			}
			if len(*printed) != 1 {
				t.Fatalf("printed %d results, want the previous result passed through", len(*printed))
			}
		})
	}
}

func TestAddNeedsPrevResult(t *testing.T) {
	p, _ := plugin(&fakeCaller{})
	err := p.Add(&skel.CmdArgs{Args: podArgs, StdinData: []byte(`{"cniVersion":"1.0.0","name":"lab","type":"ambient-cni","agentSocket":"/s"}`)})
	if err == nil || !strings.Contains(err.Error(), "prevResult") {
		t.Errorf("Add without prevResult = %v", err)
	}
}

func TestDelNeverFails(t *testing.T) {
	f := &fakeCaller{err: errors.New("unreachable")}
	p, _ := plugin(f)
	if err := p.Del(&skel.CmdArgs{Args: podArgs, StdinData: []byte(stdin)}); err != nil {
		t.Errorf("Del = %v, want nil even with the agent away", err)
	}
	if err := p.Del(&skel.CmdArgs{Args: podArgs, StdinData: []byte(`not json`)}); err != nil {
		t.Errorf("Del of an unreadable configuration = %v", err)
	}
	if len(f.got) != 1 || f.got[0] != PathDel {
		t.Errorf("agent calls = %v", f.got)
	}
}

func TestCheckAndStatus(t *testing.T) {
	f := &fakeCaller{err: errors.New("pod shop/web belongs in the mesh and is not set up")}
	p, _ := plugin(f)
	if err := p.Check(&skel.CmdArgs{Args: podArgs, StdinData: []byte(stdin)}); err == nil {
		t.Error("Check passed with the agent reporting the pod not set up")
	}
	var te *types.Error
	if err := p.Status(&skel.CmdArgs{StdinData: []byte(stdin)}); !errors.As(err, &te) || te.Code != types.ErrPluginNotAvailable {
		t.Errorf("Status with the agent away = %v, want ErrPluginNotAvailable", err)
	}
	f.err = nil
	if err := p.Check(&skel.CmdArgs{Args: podArgs, StdinData: []byte(stdin)}); err != nil {
		t.Errorf("Check = %v", err)
	}
}

// TestAddFallback: when the agent gives no answer, the plugin asks the API server itself and lets
// through only the pods the rule puts outside the mesh.
func TestAddFallback(t *testing.T) {
	noAnswer := fmt.Errorf("%w: unreachable at /var/run/ambient/cni.sock: connect: no such file", ErrNoAnswer)
	withAccess := strings.Replace(stdin, `"agentSocket"`, `"apiAccess":"/etc/cni/net.d/ambient-cni.credentials","agentSocket"`, 1)
	for _, tc := range []struct {
		name      string
		stdin     string
		enrol     bool
		decideErr error
		wantError string
	}{
		{"outside the mesh: starts", withAccess, false, nil, ""},
		{"in the mesh: refused", withAccess, true, nil, "belongs in the mesh"},
		{"API unreachable too: refused", withAccess, false, errors.New("get pod: 401 Unauthorized"), "could not tell"},
		{"no fallback configured: refused", stdin, false, nil, "unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, printed := plugin(&fakeCaller{err: noAnswer})
			var asked string
			p.Decide = func(_ context.Context, path, ns, name string) (bool, string, error) {
				asked = path + " " + ns + "/" + name
				return tc.enrol, "namespace label", tc.decideErr
			}
			err := p.Add(&skel.CmdArgs{ContainerID: "c1", Netns: "/run/netns/p", Args: podArgs, StdinData: []byte(tc.stdin)})
			if tc.wantError == "" {
				if err != nil || len(*printed) != 1 {
					t.Fatalf("Add = %v (printed %d), want the pod through", err, len(*printed))
				}
				if asked != "/etc/cni/net.d/ambient-cni.credentials shop/web" {
					t.Errorf("fallback asked %q", asked)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantError) {
				t.Fatalf("Add = %v, want an error with %q", err, tc.wantError)
			}
		})
	}
}

// TestDecideFromAPI reads a pod and its namespace from a TLS API server with a bearer token.
func TestDecideFromAPI(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "{}", http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case "/api/v1/namespaces/shop":
			fmt.Fprint(w, `{"metadata":{"name":"shop","labels":{"istio.io/dataplane-mode":"ambient"}}}`)
		case "/api/v1/namespaces/shop/pods/web":
			fmt.Fprint(w, `{"metadata":{"name":"web"},"spec":{}}`)
		case "/api/v1/namespaces/shop/pods/out":
			fmt.Fprint(w, `{"metadata":{"name":"out","labels":{"istio.io/dataplane-mode":"none"}},"spec":{}}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	path := filepath.Join(t.TempDir(), APIAccessFile)
	for _, tc := range []struct {
		token, pod string
		want       bool
		wantErr    bool
	}{
		{"tok", "web", true, false},
		{"tok", "out", false, false},
		{"tok", "missing", false, true},
		{"wrong", "web", false, true},
	} {
		if _, err := WriteAPIAccess(path, APIAccess{Server: srv.URL, CAData: ca, Token: tc.token}); err != nil {
			t.Fatal(err)
		}
		got, _, err := decideFromAPI(context.Background(), path, "shop", tc.pod)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("token %s pod %s: decide = %v, %v; want %v, error %v", tc.token, tc.pod, got, err, tc.want, tc.wantErr)
		}
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("credentials mode %v, want 0600", st.Mode().Perm())
	}
}

// TestAgentClientServer is the real exchange over a unix socket: a refusal carries the agent's
// message; "starting" is no answer.
func TestAgentClientServer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "cni.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	h := &fakeHandler{}
	srv := &http.Server{Handler: NewServeMux(h, 5*time.Second)}
	go srv.Serve(l)
	defer srv.Close()
	c := NewAgentClient(sock)
	ctx := context.Background()
	if r, err := c.Call(ctx, PathAdd, PodRequest{Namespace: "shop", Name: "web"}); err != nil || !r.Enrolled {
		t.Errorf("add = %+v, %v", r, err)
	}
	h.err = errors.New("attach: no such device")
	if _, err := c.Call(ctx, PathAdd, PodRequest{Namespace: "shop", Name: "web"}); err == nil || errors.Is(err, ErrNoAnswer) || !strings.Contains(err.Error(), "no such device") {
		t.Errorf("refused add = %v, want the agent's message, not ErrNoAnswer", err)
	}
	h.err = ErrNotReady
	if _, err := c.Call(ctx, PathAdd, PodRequest{Namespace: "shop", Name: "web"}); !errors.Is(err, ErrNoAnswer) {
		t.Errorf("add while starting = %v, want ErrNoAnswer", err)
	}
	if _, err := NewAgentClient(sock+".gone").Call(ctx, PathAdd, PodRequest{}); !errors.Is(err, ErrNoAnswer) {
		t.Errorf("add to no agent = %v, want ErrNoAnswer", err)
	}
}

type fakeHandler struct{ err error }

func (f *fakeHandler) CNIAdd(context.Context, PodRequest) (bool, error)   { return f.err == nil, f.err }
func (f *fakeHandler) CNIDel(context.Context, PodRequest) error           { return f.err }
func (f *fakeHandler) CNICheck(context.Context, PodRequest) (bool, error) { return f.err == nil, f.err }
