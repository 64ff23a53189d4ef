package cni

// The plugin's fallback when the agent gives no answer (restarting, stuck, not yet up): a pod
// outside the mesh must still start, and a pod in it must not start unprotected. So the plugin
// reads the pod and its namespace from the API server itself, with credentials the agent keeps
// in the CNI configuration directory, and applies the same rule (Enrols). It only ever lets a pod
// through that the rule puts outside the mesh; when it cannot tell, ADD fails.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/ambient-mesh/ambient/api/mesh"
)

// APIAccessFile is the name of the credentials file in the CNI configuration directory. Not
// .conf, .conflist or .json: runtimes take any file with those endings for a network
// configuration, and this one must never be picked as the node's network.
const APIAccessFile = "ambient-cni.credentials"

// APIAccess is what the plugin needs to read pods and namespaces: the API server, its CA and a
// token of the agent's service account (read access to pods and namespaces). The agent rewrites
// it as its token rotates; the file is mode 0600.
type APIAccess struct {
	Server string `json:"server"`
	CAData []byte `json:"caData,omitempty"`
	Token  string `json:"token"`
}

// WriteAPIAccess writes the file atomically, reporting whether it changed.
func WriteAPIAccess(path string, a APIAccess) (bool, error) {
	b, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return false, err
	}
	if cur, err := os.ReadFile(path); err == nil && string(cur) == string(b) {
		return false, nil
	}
	return true, writeAtomic(path, b, 0o600)
}

// decideFromAPI applies the rule to the pod as the API server has it.
func decideFromAPI(ctx context.Context, accessPath, namespace, name string) (bool, string, error) {
	b, err := os.ReadFile(accessPath)
	if err != nil {
		return false, "", fmt.Errorf("read API access: %w", err)
	}
	var a APIAccess
	if err := json.Unmarshal(b, &a); err != nil {
		return false, "", fmt.Errorf("parse %s: %w", accessPath, err)
	}
	pool := x509.NewCertPool()
	if len(a.CAData) > 0 && !pool.AppendCertsFromPEM(a.CAData) {
		return false, "", fmt.Errorf("%s: no CA certificate in caData", accessPath)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	var pod struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec struct {
			HostNetwork bool `json:"hostNetwork"`
		} `json:"spec"`
	}
	var ns struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	base := a.Server + "/api/v1/namespaces/" + url.PathEscape(namespace)
	if err := getJSON(ctx, hc, a.Token, base+"/pods/"+url.PathEscape(name), &pod); err != nil {
		return false, "", fmt.Errorf("get pod: %w", err)
	}
	if err := getJSON(ctx, hc, a.Token, base, &ns); err != nil {
		return false, "", fmt.Errorf("get namespace: %w", err)
	}
	enrol, reason := Enrols(pod.Metadata.Labels[mesh.LabelDataplaneMode], ns.Metadata.Labels[mesh.LabelDataplaneMode], pod.Spec.HostNetwork)
	return enrol, reason, nil
}

func getJSON(ctx context.Context, hc *http.Client, token, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return json.Unmarshal(b, v)
}
