package ambientctl

// Rendering: every command that shows data takes -o table|json|yaml. JSON and YAML are the
// report's own shape (stable, golden-tested); the table is for people and may change.

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"
)

// render writes v as format; table writes it with tableFn.
func render(w io.Writer, format string, v any, tableFn func(io.Writer)) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case "", "table":
		tableFn(w)
		return nil
	default:
		return fmt.Errorf("unknown output format %q: use table, json or yaml", format)
	}
}

// table writes the report for people.
func (r *Report) table(out io.Writer, now time.Time) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	cp := r.ControlPlane
	fmt.Fprintln(w, "CONTROL PLANE")
	if !cp.Installed {
		fmt.Fprintln(w, "  istiod-lite\tnot installed")
	} else {
		fmt.Fprintf(w, "  istiod-lite\t%d/%d ready\tleader %s\tversion %s\n", cp.Ready, cp.Replicas, orDash(cp.Leader), orDash(cp.Version))
		fmt.Fprintf(w, "  proxies\t%d connected\t%d up to date\n", cp.Proxies, cp.UpToDate)
		if !cp.RootNotAfter.IsZero() {
			fmt.Fprintf(w, "  CA root\texpires %s\t(in %s)\n", cp.RootNotAfter.UTC().Format(time.RFC3339), days(cp.RootNotAfter.Sub(now)))
		}
	}
	fmt.Fprintln(w, "\nNODES")
	fmt.Fprintln(w, "  NODE\tZTUNNEL\tWORKLOADS\tCERTIFICATES\tEARLIEST EXPIRY\tAGENT")
	for _, n := range r.Nodes {
		exp := "-"
		if !n.EarliestExpiry.IsZero() {
			exp = "in " + n.EarliestExpiry.Sub(now).Round(time.Minute).String()
		}
		fmt.Fprintf(w, "  %s\t%s\t%d\t%d\t%s\t%s\n", n.Name, n.Ztunnel, n.Workloads, n.Certificates, exp, n.Agent)
	}
	fmt.Fprintf(w, "\nENROLLED NAMESPACES\t%s\n", orDash(strings.Join(r.Namespaces, ", ")))
	if len(r.Workloads) > 0 {
		fmt.Fprintln(w, "\nWORKLOADS")
		fmt.Fprintln(w, "  NAMESPACE\tPOD\tNODE\tREDIRECTION")
		for _, wl := range r.Workloads {
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", wl.Namespace, wl.Name, wl.Node, wl.Redirection)
		}
	}
	if len(r.Waypoints) > 0 {
		fmt.Fprintln(w, "\nWAYPOINTS")
		for _, wp := range r.Waypoints {
			state := "ready"
			if !wp.Ready {
				state = "not ready"
			}
			fmt.Fprintf(w, "  %s/%s\t%s\n", wp.Namespace, wp.Name, state)
		}
	}
	w.Flush()
	if len(r.Problems) == 0 {
		fmt.Fprintln(out, "\n✔ no problems found")
		return
	}
	fmt.Fprintf(out, "\n✘ %d problem(s)\n", len(r.Problems))
	for _, p := range r.Problems {
		fmt.Fprintf(out, "  %s\n      cause: %s\n      hint:  %s\n", p.Object, p.Cause, p.Hint)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func days(d time.Duration) string {
	if d < 48*time.Hour {
		return d.Round(time.Minute).String()
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
