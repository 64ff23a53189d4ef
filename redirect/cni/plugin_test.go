package cni

import (
	"context"
	"errors"
	"strings"
	"testing"

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
		{"agent unreachable: the pod fails to start", podArgs, errors.New("ambient agent unreachable at /var/run/ambient/cni.sock: connect: no such file"), true, "unreachable"},
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
