package kubelet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
)

// NetnsPrefix names the pods' network namespaces (/run/netns/<prefix><uid>).
const NetnsPrefix = "ambient-pod-"

// sandbox is a pod's network namespace and cgroup.
type sandbox struct {
	netns  string // name under /run/netns; empty for hostNetwork pods
	cgroup string // cgroup v2 directory
	podIP  string
}

func (s *sandbox) netnsPath() string {
	if s.netns == "" {
		return ""
	}
	return "/run/netns/" + s.netns
}

// network runs CNI for pods: the node's configuration list from its CNI config directory,
// invoked with the runtime arguments a real kubelet's runtime passes, each plugin in the node's
// view of the file system (nodeExec).
type network struct {
	cni      *libcni.CNIConfig
	confDir  string
	loopback *libcni.NetworkConfigList
}

func newNetwork(binDir, confDir, cacheDir string, exec invoke.Exec) (*network, error) {
	lo, err := libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.0.0","name":"lo","plugins":[{"type":"loopback"}]}`))
	if err != nil {
		return nil, err
	}
	return &network{cni: libcni.NewCNIConfigWithCacheDir([]string{binDir}, cacheDir, exec), confDir: confDir, loopback: lo}, nil
}

// confList loads the first configuration list in the directory, in lexical order, as kubelets
// do; it is read on every ADD so that a chained plugin installed later is picked up.
func (n *network) confList() (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(n.confDir, []string{".conflist"})
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	if len(files) == 0 {
		return nil, fmt.Errorf("no CNI configuration in %s", n.confDir)
	}
	return libcni.ConfListFromFile(files[0])
}

func runtimeConf(pod *corev1.Pod, netnsPath string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: string(pod.UID),
		NetNS:       netnsPath,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "true"},
			{"K8S_POD_NAMESPACE", pod.Namespace},
			{"K8S_POD_NAME", pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", string(pod.UID)},
			{"K8S_POD_UID", string(pod.UID)},
		},
	}
}

// setup creates the pod's network namespace and cgroup and runs CNI ADD.
func (n *network) setup(ctx context.Context, pod *corev1.Pod, cgroupParent string) (*sandbox, error) {
	sb := &sandbox{cgroup: filepath.Join(cgroupParent, string(pod.UID))}
	if err := os.MkdirAll(sb.cgroup, 0o755); err != nil {
		return nil, fmt.Errorf("pod cgroup: %w", err)
	}
	if pod.Spec.HostNetwork {
		return sb, nil
	}
	sb.netns = NetnsPrefix + string(pod.UID)
	if _, err := os.Stat(sb.netnsPath()); errors.Is(err, os.ErrNotExist) {
		if out, err := exec.Command("ip", "netns", "add", sb.netns).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("create netns: %w: %s", err, bytes.TrimSpace(out))
		}
	}
	if _, err := n.cni.AddNetworkList(ctx, n.loopback, runtimeConf(pod, sb.netnsPath())); err != nil {
		return nil, fmt.Errorf("cni add loopback: %w", err)
	}
	list, err := n.confList()
	if err != nil {
		return nil, err
	}
	res, err := n.cni.AddNetworkList(ctx, list, runtimeConf(pod, sb.netnsPath()))
	if err != nil {
		// As a runtime does: a sandbox whose ADD failed is torn down (DEL releases what the
		// plugins before the failing one set up) and created anew on the next attempt.
		if derr := n.teardown(ctx, pod); derr != nil {
			err = errors.Join(err, fmt.Errorf("tear the failed sandbox down: %w", derr))
		}
		return nil, fmt.Errorf("cni add %s: %w", list.Name, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("cni result: %w", err)
	}
	for _, ipc := range r.IPs {
		if ipc.Address.IP.To4() != nil {
			sb.podIP = ipc.Address.IP.String()
			break
		}
	}
	if sb.podIP == "" && len(r.IPs) > 0 {
		sb.podIP = r.IPs[0].Address.IP.String()
	}
	if net.ParseIP(sb.podIP) == nil {
		return nil, fmt.Errorf("cni add %s: no IP in result", list.Name)
	}
	return sb, nil
}

// teardown runs CNI DEL and removes the namespace and cgroup. It is safe to repeat.
func (n *network) teardown(ctx context.Context, pod *corev1.Pod) error {
	var errs []error
	ns := NetnsPrefix + string(pod.UID)
	path := "/run/netns/" + ns
	if !pod.Spec.HostNetwork {
		if list, err := n.confList(); err == nil {
			if err := n.cni.DelNetworkList(ctx, list, runtimeConf(pod, path)); err != nil {
				errs = append(errs, fmt.Errorf("cni del %s: %w", list.Name, err))
			}
		} else {
			errs = append(errs, err)
		}
		_ = n.cni.DelNetworkList(ctx, n.loopback, runtimeConf(pod, path))
		if _, err := os.Stat(path); err == nil {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("delete netns: %w: %s", err, strings.TrimSpace(string(out))))
			}
		}
	}
	return errors.Join(errs...)
}
