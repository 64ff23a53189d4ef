package cni

// The plugin ↔ agent exchange: JSON over HTTP on the agent's unix socket. HTTP because it gives
// request/response, status codes and timeouts for free, and the agent serves its other local
// endpoints the same way; a unix socket because only the node (a hostPath directory) reaches it.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Paths of the agent's CNI endpoints.
const (
	PathAdd   = "/v1/cni/add"
	PathDel   = "/v1/cni/del"
	PathCheck = "/v1/cni/check"
)

// ErrNotReady is what the agent answers while it starts (HTTP 503).
var ErrNotReady = errors.New("the node agent is starting")

// ErrNoAnswer wraps every failure to get an answer from the agent (unreachable, starting, timed
// out, garbled), as opposed to the agent's refusal to set a pod up: the plugin then decides by
// itself whether the pod may start (fallback.go).
var ErrNoAnswer = errors.New("no answer from the node agent")

// PodRequest is what the plugin tells the agent about a pod's sandbox.
type PodRequest struct {
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	UID         string   `json:"uid"`
	ContainerID string   `json:"containerID"`
	Netns       string   `json:"netns"` // path of the sandbox's network namespace
	IPs         []string `json:"ips,omitempty"`
}

// PodResponse is the agent's answer. A non-2xx status carries Error instead.
type PodResponse struct {
	// Enrolled says the pod is in the mesh and set up (ADD, CHECK); false: the pod is outside
	// the mesh and nothing was done.
	Enrolled bool   `json:"enrolled"`
	Error    string `json:"error,omitempty"`
}

// AgentClient calls the agent's CNI endpoints on its unix socket.
type AgentClient struct {
	Socket string
	hc     *http.Client
}

// NewAgentClient returns a client for the agent at socket.
func NewAgentClient(socket string) *AgentClient {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true, // one request per plugin run
	}
	return &AgentClient{Socket: socket, hc: &http.Client{Transport: tr}}
}

// Call posts req to path and returns the agent's answer; a refusal by the agent is an error
// carrying its message.
func (c *AgentClient) Call(ctx context.Context, path string, req PodRequest) (PodResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return PodResponse{}, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent"+path, bytes.NewReader(body))
	if err != nil {
		return PodResponse{}, err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(hr)
	if err != nil {
		return PodResponse{}, fmt.Errorf("%w: unreachable at %s: %w", ErrNoAnswer, c.Socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return PodResponse{}, fmt.Errorf("%w: read answer: %w", ErrNoAnswer, err)
	}
	var out PodResponse
	if err := json.Unmarshal(b, &out); err != nil {
		return PodResponse{}, fmt.Errorf("%w: answer %s: %w", ErrNoAnswer, resp.Status, err)
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		return out, fmt.Errorf("%w: %s", ErrNoAnswer, out.Error)
	}
	if resp.StatusCode/100 != 2 {
		if out.Error == "" {
			out.Error = resp.Status
		}
		return out, fmt.Errorf("ambient agent: %s", out.Error)
	}
	return out, nil
}

// Handler serves the CNI endpoints for the agent.
type Handler interface {
	CNIAdd(ctx context.Context, req PodRequest) (enrolled bool, err error)
	CNIDel(ctx context.Context, req PodRequest) error
	CNICheck(ctx context.Context, req PodRequest) (enrolled bool, err error)
}

// NewServeMux returns the agent's CNI endpoints over h. Each request is bounded by timeout.
func NewServeMux(h Handler, timeout time.Duration) *http.ServeMux {
	mux := http.NewServeMux()
	serve := func(fn func(context.Context, PodRequest) (bool, error)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var req PodRequest
			if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
				writeJSON(w, http.StatusBadRequest, PodResponse{Error: "bad request: " + err.Error()})
				return
			}
			ctx, cancel := context.WithTimeout(r.Context(), timeout)
			defer cancel()
			enrolled, err := fn(ctx, req)
			if errors.Is(err, ErrNotReady) {
				writeJSON(w, http.StatusServiceUnavailable, PodResponse{Error: err.Error()})
				return
			}
			if err != nil {
				writeJSON(w, http.StatusInternalServerError, PodResponse{Error: err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, PodResponse{Enrolled: enrolled})
		}
	}
	mux.Handle("POST "+PathAdd, serve(h.CNIAdd))
	mux.Handle("POST "+PathCheck, serve(h.CNICheck))
	mux.Handle("POST "+PathDel, serve(func(ctx context.Context, req PodRequest) (bool, error) {
		return false, h.CNIDel(ctx, req)
	}))
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
