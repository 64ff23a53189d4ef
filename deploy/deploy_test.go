//go:build e2e

package deploy_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// The commands the README gives, run from the repository root.
var (
	helmTemplate  = []string{"template", "ambient", "deploy/charts/ambient", "--namespace", "istio-system", "--include-crds"}
	kustomizeArgs = []string{"kustomize", "deploy/"}
)

// kustomizeOnly are the objects the kustomization has and the chart must not: helm install
// --create-namespace makes the namespace, and a chart that rendered it too would fail that
// install (the namespace exists and has no Helm ownership metadata).
var kustomizeOnly = map[key]bool{{Kind: "Namespace", Name: "istio-system"}: true}

// maxDiffs bounds the mismatching objects reported, so that one broken helper does not bury
// the first diff under twenty more.
const maxDiffs = 5

// TestChartMatchesKustomization checks that the chart, with its default values, renders the
// objects of kubectl kustomize deploy/: same kinds, names and namespaces, and the same content.
func TestChartMatchesKustomization(t *testing.T) {
	tools := toolsDir(t)
	want := parse(t, run(t, filepath.Join(tools, "bin", "kubectl"), kustomizeArgs...))
	got := parse(t, run(t, filepath.Join(tools, "bin", "helm"), helmTemplate...))

	for k := range kustomizeOnly {
		if _, ok := want[k]; !ok {
			t.Errorf("kubectl kustomize has no %s, which the test expects only there", k)
		}
		if _, ok := got[k]; ok {
			t.Errorf("the chart renders %s: helm install --create-namespace would fail on it", k)
		}
		delete(want, k)
	}
	compare(t, want, got)
}

// TestChartValues checks that each value changes what it names and nothing else: the
// rendering with the value must equal the default rendering with the expected edit applied.
func TestChartValues(t *testing.T) {
	helm := filepath.Join(toolsDir(t), "bin", "helm")
	defaults := run(t, helm, helmTemplate...)
	base := parse(t, defaults)

	tests := []struct {
		name string
		set  []string
		edit func(t *testing.T, objs objects)
	}{{
		name: "image tag and registry",
		set:  []string{"ztunnel.image.tag=v1.2.3", "ztunnel.image.registry=registry.example/mesh", "istiodLite.image.tag=v1.2.3"},
		edit: func(t *testing.T, objs objects) {
			container(t, objs, "DaemonSet", "ztunnel")["image"] = "registry.example/mesh/ambient/ztunnel:v1.2.3"
			container(t, objs, "Deployment", "istiod-lite")["image"] = "ambient/istiod-lite:v1.2.3"
		},
	}, {
		name: "pull policy",
		set:  []string{"agent.image.pullPolicy=IfNotPresent"},
		edit: func(t *testing.T, objs objects) {
			container(t, objs, "DaemonSet", "ambient-agent")["imagePullPolicy"] = "IfNotPresent"
		},
	}, {
		name: "trust domain",
		set:  []string{"trustDomain=example.org"},
		edit: func(t *testing.T, objs objects) {
			c := container(t, objs, "Deployment", "istiod-lite")
			c["args"] = append(c["args"].([]any), "--trust-domain=example.org")
			container(t, objs, "DaemonSet", "ztunnel")["args"] = []any{"--trust-domain=example.org"}
		},
	}, {
		name: "waypoint image",
		set:  []string{"istiodLite.waypointImage=registry.example/waypoint:v2"},
		edit: func(t *testing.T, objs objects) {
			c := container(t, objs, "Deployment", "istiod-lite")
			c["args"] = append(c["args"].([]any), "--waypoint-image=registry.example/waypoint:v2")
		},
	}, {
		name: "waypoint tracing",
		set:  []string{"istiodLite.waypointTracing.endpoint=otel-collector.observability.svc:4317", "istiodLite.waypointTracing.samplingPercent=5"},
		edit: func(t *testing.T, objs objects) {
			c := container(t, objs, "Deployment", "istiod-lite")
			c["args"] = append(c["args"].([]any), "--waypoint-tracing-endpoint=otel-collector.observability.svc:4317", "--waypoint-tracing-sampling=5")
		},
	}, {
		name: "istiod-lite replicas",
		set:  []string{"istiodLite.replicas=3"},
		edit: func(t *testing.T, objs objects) {
			spec := objs[key{Kind: "Deployment", Namespace: "istio-system", Name: "istiod-lite"}]["spec"].(map[string]any)
			spec["replicas"] = float64(3) // JSON numbers
		},
	}, {
		name: "resources",
		set:  []string{"agent.resources.limits.memory=1Gi", "ztunnel.resources.requests.cpu=200m"},
		edit: func(t *testing.T, objs objects) {
			res := container(t, objs, "DaemonSet", "ambient-agent")["resources"].(map[string]any)
			res["limits"].(map[string]any)["memory"] = "1Gi"
			res = container(t, objs, "DaemonSet", "ztunnel")["resources"].(map[string]any)
			res["requests"].(map[string]any)["cpu"] = "200m"
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := parse(t, defaults) // a copy of base to edit
			tc.edit(t, want)
			if cmp.Equal(want, base) {
				t.Fatal("the edit changes nothing: the case tests nothing")
			}
			args := append([]string(nil), helmTemplate...)
			for _, s := range tc.set {
				args = append(args, "--set", s)
			}
			compare(t, want, parse(t, run(t, helm, args...)))
		})
	}
}

// TestChartRejects checks the values and namespaces the chart refuses, with the reason.
func TestChartRejects(t *testing.T) {
	helm := filepath.Join(toolsDir(t), "bin", "helm")
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{{
		// The binaries' defaults name istio-system (ztunnel dials istiod-lite.istio-system.svc).
		name:    "another namespace",
		args:    []string{"template", "ambient", "deploy/charts/ambient", "--namespace", "mesh"},
		wantErr: "installs into istio-system only",
	}, {
		// No binary has a log level flag: the schema refuses the key instead of ignoring it.
		name:    "unknown value",
		args:    append(append([]string(nil), helmTemplate...), "--set", "logLevel=debug"),
		wantErr: "additional properties 'logLevel' not allowed",
	}, {
		name:    "bad pull policy",
		args:    append(append([]string(nil), helmTemplate...), "--set", "ztunnel.image.pullPolicy=Sometimes"),
		wantErr: "pullPolicy",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, err := runErr(helm, tc.args...)
			if err == nil {
				t.Fatalf("helm %s succeeded, want an error with %q", strings.Join(tc.args, " "), tc.wantErr)
			}
			if !strings.Contains(stderr, tc.wantErr) {
				t.Errorf("helm error does not say %q:\n%s", tc.wantErr, stderr)
			}
		})
	}
}

// key names an object. The kind goes without its API group: no two groups of the install have
// a kind of the same name.
type key struct{ Kind, Namespace, Name string }

func (k key) String() string {
	if k.Namespace == "" {
		return k.Kind + "/" + k.Name
	}
	return k.Kind + "/" + k.Namespace + "/" + k.Name
}

type objects map[key]map[string]any

// compare reports the objects missing from got, the extra ones, and the diffs of the first
// maxDiffs that differ, in a stable order.
func compare(t *testing.T, want, got objects) {
	t.Helper()
	var missing, extra, both []key
	for k := range want {
		if _, ok := got[k]; ok {
			both = append(both, k)
		} else {
			missing = append(missing, k)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	if len(missing) > 0 {
		t.Errorf("the chart lacks %d objects: %v", len(missing), sorted(missing))
	}
	if len(extra) > 0 {
		t.Errorf("the chart has %d objects more: %v", len(extra), sorted(extra))
	}
	n := 0
	for _, k := range sorted(both) {
		if diff := cmp.Diff(want[k], got[k]); diff != "" {
			if n++; n <= maxDiffs {
				t.Errorf("%s differs (-want +got):\n%s", k, diff)
			}
		}
	}
	if n > maxDiffs {
		t.Errorf("and %d more objects differ", n-maxDiffs)
	}
}

func sorted(ks []key) []key {
	sort.Slice(ks, func(i, j int) bool { return ks[i].String() < ks[j].String() })
	return ks
}

// container returns the first container of a workload's pod template, to edit in place.
func container(t *testing.T, objs objects, kind, name string) map[string]any {
	t.Helper()
	obj, ok := objs[key{Kind: kind, Namespace: "istio-system", Name: name}]
	if !ok {
		t.Fatalf("no %s %s", kind, name)
	}
	spec := obj["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	return spec["containers"].([]any)[0].(map[string]any)
}

// parse splits a multi-document YAML stream into objects by kind, namespace and name. Empty
// documents (Helm leaves them for templates that render nothing) are skipped.
func parse(t *testing.T, stream []byte) objects {
	t.Helper()
	objs := objects{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("split YAML stream: %v", err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatalf("parse YAML document: %v\n%s", err, head(doc))
		}
		if obj == nil {
			continue
		}
		meta, _ := obj["metadata"].(map[string]any)
		kind, _ := obj["kind"].(string)
		name, _ := meta["name"].(string)
		ns, _ := meta["namespace"].(string)
		if kind == "" || name == "" {
			t.Fatalf("document without kind or name:\n%s", head(doc))
		}
		k := key{Kind: kind, Namespace: ns, Name: name}
		if _, dup := objs[k]; dup {
			t.Fatalf("%s appears twice", k)
		}
		objs[k] = obj
	}
	if len(objs) == 0 {
		t.Fatal("no objects in the stream")
	}
	return objs
}

func head(doc []byte) string {
	if len(doc) > 400 {
		return string(doc[:400]) + "..."
	}
	return string(doc)
}

// toolsDir builds the lab's tools, or finds them in the cache, and returns their directory.
func toolsDir(t *testing.T) string {
	t.Helper()
	abs, err := filepath.Abs(filepath.Join(repoRoot, "e2e", "tools", "build.sh"))
	if err != nil {
		t.Fatal(err)
	}
	out, stderr, err := runErr(abs)
	if err != nil {
		t.Fatalf("e2e/tools/build.sh: %v\n%s", err, stderr)
	}
	return strings.TrimSpace(string(out))
}

// run runs a tool in the repository root and returns its standard output.
func run(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	out, stderr, err := runErr(bin, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, stderr)
	}
	return out
}

// runErr runs a tool in the repository root. Helm gets directories of its own, so that a
// user's repositories and plugins cannot change what it renders.
func runErr(bin string, args ...string) (stdout []byte, stderr string, err error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = repoRoot
	home, err := os.MkdirTemp("", "deploy-test-helm-")
	if err != nil {
		return nil, "", err
	}
	defer os.RemoveAll(home)
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"))
	var errb bytes.Buffer
	cmd.Stderr = &errb
	stdout, err = cmd.Output()
	return stdout, errb.String(), err
}

// repoRoot is the repository root: go test runs in the package directory, deploy/.
const repoRoot = ".."
