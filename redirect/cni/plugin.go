package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// DefaultTimeout bounds ADD when the conflist entry sets none: the agent loads nothing on this
// path, but it waits for ztunnel's ack.
const DefaultTimeout = 30 * time.Second

// delTimeout bounds DEL's call to the agent.
const delTimeout = 5 * time.Second

// Versions are the CNI specification versions the plugin speaks.
var Versions = version.PluginSupports("1.0.0", "1.1.0")

// conf is the plugin's stdin: its conflist entry with the runtime's additions.
type conf struct {
	types.PluginConf
	AgentSocket    string `json:"agentSocket"`
	TimeoutSeconds int    `json:"timeoutSeconds"`
	// APIAccess is the credentials file for the fallback (APIAccess); empty: no fallback.
	APIAccess string `json:"apiAccess"`
}

// k8sArgs are the CNI_ARGS a Kubernetes runtime passes.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS names
	K8S_POD_NAME               types.UnmarshallableString
	K8S_POD_UID                types.UnmarshallableString
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString
}

// Caller is how the plugin reaches the agent; *AgentClient in production.
type Caller interface {
	Call(ctx context.Context, path string, req PodRequest) (PodResponse, error)
}

// Plugin implements the CNI commands. NewCaller is called once per command with the socket
// named in the configuration.
type Plugin struct {
	NewCaller func(socket string) Caller
	// Print writes the result for the runtime (types.PrintResult in production).
	Print func(r types.Result, version string) error
	// Decide is the fallback when the agent gives no answer (decideFromAPI in production).
	Decide func(ctx context.Context, accessPath, namespace, name string) (enrol bool, reason string, err error)
}

// Main runs the plugin as a CNI binary: it reads the command from the environment and the
// configuration from stdin, and exits.
func Main() {
	p := &Plugin{
		NewCaller: func(socket string) Caller { return NewAgentClient(socket) },
		Print:     types.PrintResult,
		Decide:    decideFromAPI,
	}
	skel.PluginMainFuncs(skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC},
		Versions, "ambient-cni: sets pods up for the Ambient mesh through the node agent")
}

func parse(args *skel.CmdArgs) (*conf, error) {
	var c conf
	if err := json.Unmarshal(args.StdinData, &c); err != nil {
		return nil, fmt.Errorf("ambient-cni: parse configuration: %w", err)
	}
	if c.AgentSocket == "" {
		return nil, errors.New("ambient-cni: configuration has no agentSocket")
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return nil, fmt.Errorf("ambient-cni: parse prevResult: %w", err)
	}
	return &c, nil
}

func (c *conf) timeout() time.Duration {
	if c.TimeoutSeconds > 0 {
		return time.Duration(c.TimeoutSeconds) * time.Second
	}
	return DefaultTimeout
}

// request builds the agent request; ok is false when the sandbox is not a Kubernetes pod.
func request(args *skel.CmdArgs, ips []string) (PodRequest, bool, error) {
	var ka k8sArgs
	if err := types.LoadArgs(args.Args, &ka); err != nil {
		return PodRequest{}, false, fmt.Errorf("ambient-cni: parse CNI_ARGS: %w", err)
	}
	req := PodRequest{
		Namespace: string(ka.K8S_POD_NAMESPACE), Name: string(ka.K8S_POD_NAME), UID: string(ka.K8S_POD_UID),
		ContainerID: args.ContainerID, Netns: args.Netns, IPs: ips,
	}
	return req, req.Namespace != "" && req.Name != "", nil
}

// Add asks the agent to set the pod up and passes the previous result through. A pod the agent
// says is outside the mesh passes; a pod in the mesh that cannot be set up, or an agent that
// cannot be asked, fails ADD: the runtime then retries the sandbox rather than start the pod
// unprotected.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	if c.PrevResult == nil {
		return errors.New("ambient-cni: no prevResult: chain it after the plugin that gives the pod its addresses")
	}
	res, err := types100.NewResultFromResult(c.PrevResult)
	if err != nil {
		return fmt.Errorf("ambient-cni: convert prevResult: %w", err)
	}
	var ips []string
	for _, ip := range res.IPs {
		ips = append(ips, ip.Address.IP.String())
	}
	req, isPod, err := request(args, ips)
	if err != nil {
		return err
	}
	if isPod {
		if err := p.add(c, req); err != nil {
			return fmt.Errorf("ambient-cni: pod %s/%s: %w", req.Namespace, req.Name, err)
		}
	}
	return p.Print(c.PrevResult, c.CNIVersion)
}

func (p *Plugin) add(c *conf, req PodRequest) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout())
	defer cancel()
	_, err := p.NewCaller(c.AgentSocket).Call(ctx, PathAdd, req)
	if err == nil || !errors.Is(err, ErrNoAnswer) {
		return err // set up, or refused by the agent: that decides
	}
	if c.APIAccess == "" || p.Decide == nil {
		return err
	}
	// The agent gave no answer: a pod outside the mesh may start without it.
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	enrol, reason, derr := p.Decide(dctx, c.APIAccess, req.Namespace, req.Name)
	switch {
	case derr != nil:
		return fmt.Errorf("%w; and the fallback could not tell whether the pod belongs in the mesh: %w", err, derr)
	case enrol:
		return fmt.Errorf("the pod belongs in the mesh (%s) and cannot be set up: %w", reason, err)
	}
	return nil
}

// Del tells the agent the sandbox is going. It never fails: DEL must be idempotent and may come
// when the agent is away, which cleans up by itself when the pod is deleted.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	c, err := parse(args)
	if err != nil {
		return nil //nolint:nilerr // nothing of ours can be left for a configuration we cannot read
	}
	req, isPod, err := request(args, nil)
	if err != nil || !isPod {
		return nil //nolint:nilerr // as above
	}
	// Short: nothing waits on the answer, and a runtime retrying a failed sandbox runs DEL first.
	ctx, cancel := context.WithTimeout(context.Background(), min(c.timeout(), delTimeout))
	defer cancel()
	_, _ = p.NewCaller(c.AgentSocket).Call(ctx, PathDel, req)
	return nil
}

// Check asks the agent whether a pod that belongs to the mesh is set up.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	if c.PrevResult == nil {
		return errors.New("ambient-cni: CHECK without prevResult")
	}
	req, isPod, err := request(args, nil)
	if err != nil || !isPod {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout())
	defer cancel()
	if _, err := p.NewCaller(c.AgentSocket).Call(ctx, PathCheck, req); err != nil {
		return fmt.Errorf("ambient-cni: pod %s/%s: %w", req.Namespace, req.Name, err)
	}
	return nil
}

// Status (CNI 1.1) reports the plugin ready when the agent answers.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.NewCaller(c.AgentSocket).Call(ctx, PathCheck, PodRequest{}); err != nil {
		return &types.Error{Code: types.ErrPluginNotAvailable, Msg: "ambient agent not ready", Details: err.Error()}
	}
	return nil
}

// GC has nothing to collect: the agent forgets pods when they are deleted.
func (p *Plugin) GC(*skel.CmdArgs) error { return nil }
