package ambientctl

// `ambientctl enroll|unenroll <namespace>`: set or remove the namespace's
// istio.io/dataplane-mode=ambient label, wait for the node agents to (un)redirect its running
// pods (no restart), and summarise which pods joined or left and which could not, with why.
// While it waits it shows progress: in place on a terminal, as lines otherwise.

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/ambient-mesh/ambient/api/mesh"
)

// Enrollment is what enroll and unenroll report.
type Enrollment struct {
	Namespace string `json:"namespace"`
	Enrolled  bool   `json:"enrolled"`
	// Done are the pods that joined (enroll) or left (unenroll) the mesh.
	Done []string `json:"done"`
	// Failed are the pods that did not, each with why.
	Failed []PodFailure `json:"failed"`
}

// PodFailure is a pod that could not be (un)enrolled.
type PodFailure struct {
	Pod    string `json:"pod"`
	Reason string `json:"reason"`
}

func enrollCmd(o *options, enroll bool) *cobra.Command {
	use, short := "enroll <namespace>", "Add a namespace's pods to the mesh (no restart) and wait until they are redirected"
	if !enroll {
		use, short = "unenroll <namespace>", "Take a namespace's pods out of the mesh and wait until they are"
	}
	var timeout time.Duration
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var ns string
			if len(args) == 1 {
				ns = args[0]
			} else {
				var err error
				if ns, err = o.namespace(); err != nil {
					return err
				}
			}
			cs, _, err := o.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			e, err := setEnrollment(ctx, cs, ns, enroll, newProgress(o.errOut))
			if err != nil {
				return err
			}
			if err := render(o.out, o.output, e, e.table); err != nil {
				return err
			}
			if len(e.Failed) > 0 {
				return ErrProblems
			}
			return nil
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the pods")
	return c
}

// setEnrollment labels (or unlabels) the namespace and waits until each of its running pods is
// redirected (or no longer), a pod is marked pending by its agent, or ctx ends.
func setEnrollment(ctx context.Context, cs kubernetes.Interface, ns string, enroll bool, prog *progress) (*Enrollment, error) {
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, mesh.LabelDataplaneMode)
	if enroll {
		patch = fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, mesh.LabelDataplaneMode, mesh.DataplaneModeAmbient)
	}
	if _, err := cs.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return nil, fmt.Errorf("label namespace %s: %w", ns, err)
	}
	e := &Enrollment{Namespace: ns, Enrolled: enroll}
	verb := "redirected"
	if !enroll {
		verb = "released"
	}
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil && ctx.Err() == nil {
			return nil, fmt.Errorf("list pods of %s: %w", ns, err)
		}
		var done, pending, waiting []string
		if err == nil {
			for _, p := range pods.Items {
				if p.Spec.HostNetwork || p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil ||
					(enroll && p.Labels[mesh.LabelDataplaneMode] == mesh.DataplaneModeNone) {
					continue
				}
				a, has := p.Annotations[mesh.AnnotationRedirection]
				switch {
				case enroll && a == mesh.RedirectionEnabled, !enroll && !has:
					done = append(done, p.Name)
				case enroll && a == mesh.RedirectionPending:
					pending = append(pending, p.Name)
				default:
					waiting = append(waiting, p.Name)
				}
			}
		}
		total := len(done) + len(pending) + len(waiting)
		prog.update(fmt.Sprintf("%d/%d pods of %s %s", len(done), total, ns, verb))
		if len(waiting) == 0 || ctx.Err() != nil {
			prog.done()
			slices.Sort(done)
			e.Done = append([]string{}, done...)
			e.Failed = []PodFailure{}
			for _, p := range pending {
				pod := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: p}}
				e.Failed = append(e.Failed, PodFailure{Pod: p, Reason: orDash(lastWarning(context.WithoutCancel(ctx), cs, &pod))})
			}
			for _, p := range waiting {
				e.Failed = append(e.Failed, PodFailure{Pod: p, Reason: "not " + verb + " in time: is the node agent running on its node? (ambientctl status)"})
			}
			slices.SortFunc(e.Failed, func(a, b PodFailure) int { return strings.Compare(a.Pod, b.Pod) })
			return e, nil
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

func (e *Enrollment) table(w io.Writer) {
	verb, state := "joined the mesh", "enrolled"
	if !e.Enrolled {
		verb, state = "left the mesh", "unenrolled"
	}
	fmt.Fprintf(w, "namespace %s %s: %d pod(s) %s, no restart\n", e.Namespace, state, len(e.Done), verb)
	for _, p := range e.Done {
		fmt.Fprintf(w, "  ✔ %s\n", p)
	}
	for _, f := range e.Failed {
		fmt.Fprintf(w, "  ✘ %s: %s\n", f.Pod, f.Reason)
	}
}

// progress shows what a long command waits for: redrawn in place on a terminal, a line per
// change otherwise.
type progress struct {
	w    io.Writer
	tty  bool
	last string
	spin int
}

func newProgress(w io.Writer) *progress { return &progress{w: w, tty: isTerminal(w)} }

func (p *progress) update(msg string) {
	if p.tty {
		frames := `|/-\`
		fmt.Fprintf(p.w, "\r%c %s\033[K", frames[p.spin%len(frames)], msg)
		p.spin++
		p.last = msg
		return
	}
	if msg != p.last {
		fmt.Fprintln(p.w, msg)
		p.last = msg
	}
}

func (p *progress) done() {
	if p.tty && p.last != "" {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
