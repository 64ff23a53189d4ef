package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Up brings the lab up and returns when every node is Ready. A lab that is already up is left
// as it is; leftovers of a crashed lab are removed first.
func Up(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("lab config: %w", err)
	}
	start := time.Now()
	if apiserverHealthy(cfg) {
		log.Info("lab already up")
		return waitNodesReady(ctx, cfg, cfg.Nodes)
	}
	if err := Down(cfg, log); err != nil {
		return fmt.Errorf("clean leftovers: %w", err)
	}
	st := cfg.StateDir()
	for _, d := range []string{st, cfg.LogDir(), filepath.Join(st, "bin"), filepath.Join(st, "run")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	p, err := newPKI(filepath.Join(st, "pki"))
	if err != nil {
		return fmt.Errorf("lab pki: %w", err)
	}
	if err := setupNetwork(cfg.Nodes); err != nil {
		return err
	}
	if err := installKubectl(cfg); err != nil {
		return err
	}
	if err := startControlPlane(ctx, cfg, p, log); err != nil {
		return err
	}
	if err := Apply(ctx, cfg, kubeletAPIManifest); err != nil {
		return fmt.Errorf("kubelet API access: %w", err)
	}
	for i := 1; i <= cfg.Nodes; i++ {
		if err := startNode(cfg, p, NodeAt(i)); err != nil {
			return err
		}
	}
	if err := waitNodesReady(ctx, cfg, cfg.Nodes); err != nil {
		return err
	}
	if err := deployDNS(ctx, cfg); err != nil {
		return err
	}
	log.Info("lab up", "nodes", cfg.Nodes, "elapsed", time.Since(start).Round(time.Millisecond))
	return nil
}

func installKubectl(cfg Config) error {
	dst := filepath.Join(cfg.StateDir(), "bin", "kubectl")
	_ = os.Remove(dst)
	return os.Symlink(filepath.Join(cfg.ToolsDir, "bin", "kubectl"), dst)
}

func (c Config) tool(name string) string { return filepath.Join(c.ToolsDir, "bin", name) }

func startControlPlane(ctx context.Context, cfg Config, p *pki, log *slog.Logger) error {
	st := cfg.StateDir()
	apiURL := "https://" + APIServerIP + ":" + strconv.Itoa(APIPort)
	_, svcNet, _ := net.ParseCIDR(ServiceCIDR)
	kubeSvcIP := nthIP(svcNet, 1)
	apiCert, apiKey, err := p.issue("apiserver", "kube-apiserver", nil,
		[]net.IP{net.ParseIP(APIServerIP), kubeSvcIP, net.ParseIP("127.0.0.1")},
		[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}, true)
	if err != nil {
		return err
	}
	saPub, saKey, err := p.serviceAccountKey()
	if err != nil {
		return err
	}
	kubeconfigs := map[string][2]string{ // file -> CN, O
		"kubeconfig":              {"lab-admin", "system:masters"},
		"controller-manager.conf": {"system:kube-controller-manager", ""},
		"scheduler.conf":          {"system:kube-scheduler", ""},
	}
	for file, id := range kubeconfigs {
		var orgs []string
		if id[1] != "" {
			orgs = []string{id[1]}
		}
		name := strings.TrimSuffix(file, ".conf")
		c, k, err := p.issue(name, id[0], orgs, nil, nil, false)
		if err != nil {
			return err
		}
		if err := writeKubeconfig(filepath.Join(st, file), apiURL, p.CAPath(), c, k); err != nil {
			return err
		}
	}
	// The API server's identity towards kubelets, granted system:kubelet-api-admin by the binding
	// in manifests/kubelet-api.yaml (as kubeadm does), not a cluster administrator.
	kubeletClientCert, kubeletClientKey, err := p.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", nil, nil, nil, false)
	if err != nil {
		return err
	}
	daemons := []daemon{
		{Name: "etcd", Netns: SwitchNetns, Argv: []string{cfg.tool("etcd"),
			"--name=lab", "--data-dir=" + filepath.Join(st, "etcd"),
			"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
			"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
			"--initial-cluster=lab=http://127.0.0.1:2380", "--listen-metrics-urls=http://127.0.0.1:2381",
			// The lab's data is thrown away on down; fsync buys nothing here.
			"--unsafe-no-fsync", "--log-level=warn"}},
		{Name: "kube-apiserver", Netns: SwitchNetns, Argv: []string{cfg.tool("kube-apiserver"),
			"--etcd-servers=http://127.0.0.1:2379", "--advertise-address=" + APIServerIP,
			"--bind-address=0.0.0.0", "--secure-port=" + strconv.Itoa(APIPort),
			"--tls-cert-file=" + apiCert, "--tls-private-key-file=" + apiKey, "--client-ca-file=" + p.CAPath(),
			"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
			"--service-cluster-ip-range=" + ServiceCIDR, "--allow-privileged=true",
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + saPub, "--service-account-signing-key-file=" + saKey,
			"--kubelet-client-certificate=" + kubeletClientCert, "--kubelet-client-key=" + kubeletClientKey,
			"--kubelet-certificate-authority=" + p.CAPath(), "--kubelet-preferred-address-types=InternalIP",
			"--cert-dir=" + filepath.Join(st, "pki", "apiserver-certs"), "--profiling=false", "--v=1"}},
	}
	for _, d := range daemons {
		if _, err := d.start(cfg.Root, cfg.LogDir()); err != nil {
			return err
		}
	}
	if err := poll(ctx, 60*time.Second, func() bool { return apiserverHealthy(cfg) }); err != nil {
		return fmt.Errorf("kube-apiserver not ready (see %s): %w", filepath.Join(cfg.LogDir(), "kube-apiserver.log"), err)
	}
	log.Info("kube-apiserver ready")
	rest := []daemon{
		{Name: "kube-controller-manager", Netns: SwitchNetns, Argv: []string{cfg.tool("kube-controller-manager"),
			"--kubeconfig=" + filepath.Join(st, "controller-manager.conf"),
			"--authentication-kubeconfig=" + filepath.Join(st, "controller-manager.conf"),
			"--authorization-kubeconfig=" + filepath.Join(st, "controller-manager.conf"),
			"--service-account-private-key-file=" + saKey, "--root-ca-file=" + p.CAPath(),
			"--use-service-account-credentials=true", "--leader-elect=false",
			"--bind-address=127.0.0.1", "--service-cluster-ip-range=" + ServiceCIDR,
			"--controllers=*,-nodeipam", "--v=1"}},
		{Name: "kube-scheduler", Netns: SwitchNetns, Argv: []string{cfg.tool("kube-scheduler"),
			"--kubeconfig=" + filepath.Join(st, "scheduler.conf"),
			"--authentication-kubeconfig=" + filepath.Join(st, "scheduler.conf"),
			"--authorization-kubeconfig=" + filepath.Join(st, "scheduler.conf"),
			"--leader-elect=false", "--bind-address=127.0.0.1", "--v=1"}},
	}
	var pids []int
	for _, d := range rest {
		pid, err := d.start(cfg.Root, cfg.LogDir())
		if err != nil {
			return err
		}
		pids = append(pids, pid)
	}
	// A controller that rejects its flags exits at once; catch that here rather than as
	// missing EndpointSlices or unscheduled pods later.
	time.Sleep(300 * time.Millisecond)
	for i, pid := range pids {
		if !alive(pid) {
			return fmt.Errorf("%s exited at start (see %s)", rest[i].Name, filepath.Join(cfg.LogDir(), rest[i].Name+".log"))
		}
	}
	return nil
}

// startNode writes the node's credentials, makes its root (CNI configuration and plugins,
// bpffs) and starts its lab kubelet inside the node's network namespace.
func startNode(cfg Config, p *pki, n Node) error {
	dir := cfg.NodeDir(n.Name)
	root := cfg.NodeRoot(n.Name)
	if err := makeNodeRoot(cfg, n, root); err != nil {
		return fmt.Errorf("node %s root: %w", n.Name, err)
	}
	c, k, err := p.issue("kubelet-"+n.Name, "system:node:"+n.Name, []string{"system:nodes"}, []net.IP{n.IP}, []string{n.Name}, true)
	if err != nil {
		return err
	}
	kc := filepath.Join(dir, "kubelet.conf")
	if err := writeKubeconfig(kc, "https://"+APIServerIP+":"+strconv.Itoa(APIPort), p.CAPath(), c, k); err != nil {
		return err
	}
	d := daemon{Name: "kubelet-" + n.Name, Netns: n.Netns, Argv: []string{
		filepath.Join(cfg.BinDir, "lab"), "kubelet",
		"--root=" + cfg.Root, "--node=" + n.Name, "--node-ip=" + n.IP.String(),
		"--pod-cidr=" + n.PodCIDR.String(), "--kubeconfig=" + kc,
		"--cni-conf-dir=" + filepath.Join(root, "etc/cni/net.d"), "--cni-bin-dir=" + filepath.Join(root, "opt/cni/bin"),
		"--node-root=" + root, "--state-dir=" + dir, "--bin-dir=" + cfg.BinDir + ":" + filepath.Join(cfg.ToolsDir, "bin"),
		"--cluster-dns=" + ClusterDNSIP, "--token-max-age=" + cfg.TokenMaxAge.String(),
		"--tls-cert-file=" + c, "--tls-private-key-file=" + k, "--client-ca-file=" + p.CAPath(),
	}}
	if _, err := d.start(cfg.Root, cfg.LogDir()); err != nil {
		return err
	}
	pc, pk, err := p.issue("kube-proxy", "system:kube-proxy", nil, nil, nil, false)
	if err != nil {
		return err
	}
	pkc := filepath.Join(dir, "kube-proxy.conf")
	if err := writeKubeconfig(pkc, "https://"+APIServerIP+":"+strconv.Itoa(APIPort), p.CAPath(), pc, pk); err != nil {
		return err
	}
	proxy := daemon{Name: "kube-proxy-" + n.Name, Netns: n.Netns, Argv: []string{cfg.tool("kube-proxy"),
		"--kubeconfig=" + pkc, "--hostname-override=" + n.Name, "--proxy-mode=nftables",
		"--cluster-cidr=" + PodCIDRs, "--bind-address=" + n.IP.String(),
		// Pods share one L2 bridge per node and the lab loads no br_netfilter (a host-wide
		// module), so a reply from a same-node backend would bypass conntrack; masquerading
		// service traffic brings every reply back through the node.
		"--masquerade-all",
		// Leave the host-wide conntrack table size alone; the timeouts are per namespace but
		// the defaults are fine for the lab.
		"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256", "--v=1"}}
	_, err = proxy.start(cfg.Root, cfg.LogDir())
	return err
}

// makeNodeRoot lays out the node's root file system:
//
//	etc/cni/net.d/10-lab.conflist  the node's CNI configuration list (bridge + host-local)
//	opt/cni/bin/                   links to the lab's CNI plugins
//	run/, var/run -> ../run        the node's /run (run/netns: where the host's is shown)
//	var/lib/cni/networks/          host-local's leases
//	sys/fs/bpf/                    a bpffs instance of the node's own
func makeNodeRoot(cfg Config, n Node, root string) error {
	for _, d := range []string{"etc/cni/net.d", "opt/cni/bin", "run/netns", "var/lib/cni/networks", "sys/fs/bpf"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Symlink("../run", filepath.Join(root, "var/run")); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	plugins, err := os.ReadDir(filepath.Join(cfg.ToolsDir, "cni"))
	if err != nil {
		return fmt.Errorf("lab CNI plugins: %w", err)
	}
	for _, pl := range plugins {
		if err := os.Symlink(filepath.Join(cfg.ToolsDir, "cni", pl.Name()), filepath.Join(root, "opt/cni/bin", pl.Name())); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	// Each mount of bpffs is a new instance: the node's pins never meet another node's.
	if err := mountBPFFS(filepath.Join(root, "sys/fs/bpf")); err != nil {
		return err
	}
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "lab",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": %q,
        "ranges": [[{"subnet": %q, "gateway": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
`, filepath.Join(root, "var/lib/cni/networks"), n.PodCIDR.String(), n.Gateway.String())
	return os.WriteFile(filepath.Join(root, "etc/cni/net.d", "10-lab.conflist"), []byte(conf), 0o644)
}

func nthIP(n *net.IPNet, i int) net.IP {
	ip := n.IP.To4()
	out := make(net.IP, 4)
	copy(out, ip)
	out[3] += byte(i)
	return out
}

func apiserverHealthy(cfg Config) bool {
	cert, err := tls.LoadX509KeyPair(filepath.Join(cfg.StateDir(), "pki", "kubeconfig.crt"), filepath.Join(cfg.StateDir(), "pki", "kubeconfig.key"))
	if err != nil {
		return false
	}
	caPEM, err := os.ReadFile(filepath.Join(cfg.StateDir(), "pki", "ca.crt"))
	if err != nil {
		return false
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
	resp, err := c.Get("https://" + APIServerIP + ":" + strconv.Itoa(APIPort) + "/readyz")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode == http.StatusOK
}

// Client returns a cluster-admin clientset for the lab.
func Client(cfg Config) (*kubernetes.Clientset, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig())
	if err != nil {
		return nil, err
	}
	// client-go's default limit (5/s) would throttle tests into measuring their own client.
	rc.QPS, rc.Burst = 100, 200
	return kubernetes.NewForConfig(rc)
}

func waitNodesReady(ctx context.Context, cfg Config, want int) error {
	cs, err := Client(cfg)
	if err != nil {
		return err
	}
	var last string
	err = poll(ctx, 60*time.Second, func() bool {
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			last = err.Error()
			return false
		}
		ready := 0
		for _, n := range nodes.Items {
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		last = fmt.Sprintf("%d of %d nodes ready", ready, want)
		return ready >= want
	})
	if err != nil {
		return fmt.Errorf("nodes not ready (%s): %w", last, err)
	}
	return nil
}

// poll calls cond until it returns true or timeout passes.
func poll(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("timed out after " + timeout.String())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
