// Package ambientctl is the operator's command line: status, enroll/unenroll, version and the
// node preflight check. cmd/ambientctl is only its main. It reaches the cluster as kubectl does
// (--kubeconfig, KUBECONFIG, --context, --namespace and the other overrides of client-go's
// clientcmd), and the components through the
// API server's pod proxy, never by port-forwarding. Commands return errors; main prints them and
// exits non-zero, and a command that found problems returns ErrProblems.
package ambientctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambient-mesh/ambient/internal/version"
)

// ErrProblems is returned by a command that completed and found problems it reported.
var ErrProblems = errors.New("problems found")

// options are the flags every command shares.
type options struct {
	kubeconfig string
	overrides  clientcmd.ConfigOverrides
	output     string
	out        io.Writer
	errOut     io.Writer
	now        func() time.Time
	// clients, when set, replaces the kubeconfig (tests).
	clients func() (kubernetes.Interface, ProxyGet, error)
}

func (o *options) client() (kubernetes.Interface, ProxyGet, error) {
	if o.clients != nil {
		return o.clients()
	}
	rc, err := o.config().ClientConfig()
	if err != nil {
		return nil, nil, err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	return cs, PodProxy(cs), nil
}

// config loads the kubeconfig as kubectl does: --kubeconfig, else $KUBECONFIG, else
// ~/.kube/config, else the in-cluster configuration; with the flags' overrides.
func (o *options) config() clientcmd.ClientConfig {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.kubeconfig
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &o.overrides)
}

// namespace is --namespace, else the kubeconfig context's.
func (o *options) namespace() (string, error) {
	ns, _, err := o.config().Namespace()
	return ns, err
}

// NewCommand builds the ambientctl command tree writing to out and errOut.
func NewCommand(out, errOut io.Writer) *cobra.Command {
	o := &options{out: out, errOut: errOut, now: time.Now}
	return newRoot(o)
}

func newRoot(o *options) *cobra.Command {
	root := &cobra.Command{
		Use:           "ambientctl",
		Short:         "Operate the Ambient mesh: status, enrollment, preflight checks",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(o.out)
	root.SetErr(o.errOut)
	root.PersistentFlags().StringVar(&o.kubeconfig, "kubeconfig", "", "path to the kubeconfig file")
	clientcmd.BindOverrideFlags(&o.overrides, root.PersistentFlags(), clientcmd.RecommendedConfigOverrideFlags(""))
	root.PersistentFlags().StringVarP(&o.output, "output", "o", "table", "output format: table, json or yaml")
	_ = root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	root.AddCommand(statusCmd(o), enrollCmd(o, true), enrollCmd(o, false), workloadsCmd(o), servicesCmd(o), certsCmd(o), checkCmd(o), versionCmd(o))
	return root
}

func statusCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "The mesh at a glance: control plane, nodes, enrolled namespaces and workloads, waypoints, problems",
		Long: `status reads the cluster and the components' own status (through the API server's pod proxy)
and reports what is wrong with its cause and what to do. It exits non-zero when it finds a problem.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cs, get, err := o.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			now := o.now()
			r, err := Gather(ctx, cs, get, now)
			if err != nil {
				return err
			}
			if err := render(o.out, o.output, r, func(w io.Writer) { r.table(w, now) }); err != nil {
				return err
			}
			if len(r.Problems) > 0 {
				return ErrProblems
			}
			return nil
		},
	}
}

// Versions is what `ambientctl version` reports.
type Versions struct {
	Client       string `json:"client"`
	ControlPlane string `json:"controlPlane,omitempty"`
}

func versionCmd(o *options) *cobra.Command {
	var clientOnly bool
	c := &cobra.Command{
		Use:   "version",
		Short: "The versions of ambientctl and of the control plane",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := Versions{Client: version.String()}
			var cpErr error
			if !clientOnly {
				cs, get, err := o.client()
				if err != nil {
					return err
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
				defer cancel()
				r := &Report{}
				if cpErr = r.controlPlane(ctx, cs, get, o.now()); cpErr == nil {
					v.ControlPlane = r.ControlPlane.Version
				}
			}
			err := render(o.out, o.output, v, func(w io.Writer) {
				fmt.Fprintf(w, "client: %s\n", v.Client)
				if !clientOnly {
					fmt.Fprintf(w, "control plane: %s\n", orDash(v.ControlPlane))
				}
			})
			return errors.Join(err, cpErr)
		},
	}
	c.Flags().BoolVar(&clientOnly, "client", false, "only the client's version (no cluster needed)")
	return c
}

// isTerminal reports whether w is a terminal (progress is drawn in place there, printed as
// lines otherwise).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
