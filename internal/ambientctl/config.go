package ambientctl

// What the ztunnels hold, as `istioctl ztunnel-config` shows it: `workloads` and `services`
// from one node's ztunnel (--node, else the first ready one: every ztunnel holds the same
// configuration), filtered by --namespace when it is given; `certs` from every node's ztunnel
// (or --node's). All through the API server's pod proxy. And `check`, the node preflight.

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/api/status"
	"github.com/ambient-mesh/ambient/internal/ambientctl/check"
)

// readyZtunnels are the ready ztunnel pods, of node when it is not empty, sorted by node.
func readyZtunnels(ctx context.Context, cs kubernetes.Interface, node string) ([]corev1.Pod, error) {
	pods, err := cs.CoreV1().Pods(SystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + ztunnelApp})
	if err != nil {
		return nil, fmt.Errorf("list ztunnels: %w", err)
	}
	var out []corev1.Pod
	for _, p := range pods.Items {
		if podReady(&p) && (node == "" || p.Spec.NodeName == node) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b corev1.Pod) int { return strings.Compare(a.Spec.NodeName, b.Spec.NodeName) })
	if len(out) == 0 {
		where := ""
		if node != "" {
			where = " on node " + node
		}
		return nil, fmt.Errorf("no ready ztunnel%s (ambientctl status says why)", where)
	}
	return out, nil
}

// ztunnels connects to the cluster and finds its ready ztunnels (node's only, when not empty).
func (o *options) ztunnels(ctx context.Context, node string) (ProxyGet, []corev1.Pod, error) {
	cs, get, err := o.client()
	if err != nil {
		return nil, nil, err
	}
	zts, err := readyZtunnels(ctx, cs, node)
	return get, zts, err
}

// fetchFrom reads a JSON document from a ztunnel.
func fetchFrom(ctx context.Context, get ProxyGet, p *corev1.Pod, path string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	b, err := get(ctx, p.Namespace, p.Name, mesh.PortMetrics, path)
	if err != nil {
		return fmt.Errorf("%s on %s: %w", p.Name, p.Spec.NodeName, err)
	}
	return jsonUnmarshal(b, v)
}

// configCmd builds `workloads` or `services`.
func configCmd[T any](o *options, use, short, path string, ns func(T) string, table func(io.Writer, []T)) *cobra.Command {
	var node string
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			get, zts, err := o.ztunnels(ctx, node)
			if err != nil {
				return err
			}
			var items []T
			if err := fetchFrom(ctx, get, &zts[0], path, &items); err != nil {
				return err
			}
			if want := o.overrides.Context.Namespace; want != "" {
				items = slices.DeleteFunc(items, func(it T) bool { return ns(it) != want })
			}
			if items == nil {
				items = []T{}
			}
			return render(o.out, o.output, items, func(w io.Writer) { table(w, items) })
		},
	}
	c.Flags().StringVar(&node, "node", "", "the node whose ztunnel to ask (default: the first ready one)")
	return c
}

func workloadsCmd(o *options) *cobra.Command {
	return configCmd(o, "workloads", "The workloads ztunnel knows: addresses, node, identity, protocol, waypoint", status.WorkloadsPath,
		func(w status.Workload) string { return w.Namespace },
		func(out io.Writer, ws []status.Workload) {
			w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAMESPACE\tNAME\tIP\tNODE\tIDENTITY\tPROTOCOL\tWAYPOINT")
			for _, x := range ws {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", x.Namespace, x.Name, orDash(strings.Join(x.IPs, ",")), x.Node,
					orDash(x.Identity), x.Protocol, orDash(x.Waypoint))
			}
			w.Flush()
		})
}

func servicesCmd(o *options) *cobra.Command {
	return configCmd(o, "services", "The services ztunnel knows: addresses, ports, endpoints, waypoint", status.ServicesPath,
		func(s status.Service) string { return s.Namespace },
		func(out io.Writer, ss []status.Service) {
			w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAMESPACE\tSERVICE\tVIP\tPORTS\tENDPOINTS\tWAYPOINT")
			for _, x := range ss {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\n", x.Namespace, x.Hostname, orDash(strings.Join(x.VIPs, ",")),
					orDash(strings.Join(x.Ports, ",")), x.Endpoints, orDash(x.Waypoint))
			}
			w.Flush()
		})
}

// NodeCertificate is a workload certificate a node's ztunnel holds.
type NodeCertificate struct {
	Node string `json:"node"`
	status.Certificate
}

func certsCmd(o *options) *cobra.Command {
	var node string
	c := &cobra.Command{
		Use:   "certs",
		Short: "The workload certificates each node's ztunnel holds, their state and expiry",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			get, zts, err := o.ztunnels(ctx, node)
			if err != nil {
				return err
			}
			certs := []NodeCertificate{}
			for i := range zts {
				var st status.Ztunnel
				if err := fetchFrom(ctx, get, &zts[i], status.Path, &st); err != nil {
					return err
				}
				for _, c := range st.Certificates {
					certs = append(certs, NodeCertificate{Node: zts[i].Spec.NodeName, Certificate: c})
				}
			}
			now := o.now()
			return render(o.out, o.output, certs, func(out io.Writer) {
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "NODE\tIDENTITY\tSTATE\tEXPIRES\tERROR")
				for _, c := range certs {
					exp := "-"
					if !c.NotAfter.IsZero() {
						exp = "in " + c.NotAfter.Sub(now).Round(time.Minute).String()
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", c.Node, c.Identity, c.State, exp, orDash(c.LastError))
				}
				w.Flush()
			})
		},
	}
	c.Flags().StringVar(&node, "node", "", "only this node's ztunnel")
	return c
}

func checkCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Preflight this node: kernel ≥ 6.6, the eBPF hooks, cgroup v2, BTF, bpffs, CNI configuration, privileges",
		Long: `check runs on a node (as root, where the node agent would run) and says, for each requirement
of the mesh, what it found and, when something is missing, what to do. It exits non-zero when a
requirement fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			results := check.Run(cmd.Context(), check.DefaultEnv())
			err := render(o.out, o.output, results, func(out io.Writer) {
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				for _, r := range results {
					mark := map[check.Status]string{check.OK: "✔", check.Warn: "!", check.Fail: "✘"}[r.Status]
					fmt.Fprintf(w, "%s %s\t%s\n", mark, r.Name, r.Detail)
					if r.Hint != "" {
						fmt.Fprintf(w, "  \t↳ %s\n", r.Hint)
					}
				}
				w.Flush()
			})
			if err != nil {
				return err
			}
			if check.Failed(results) {
				return ErrProblems
			}
			return nil
		},
	}
}
