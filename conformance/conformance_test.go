//go:build conformance

package conformance

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwconformance "sigs.k8s.io/gateway-api/conformance"
	confv1 "sigs.k8s.io/gateway-api/conformance/apis/v1"
	"sigs.k8s.io/gateway-api/conformance/tests"
	"sigs.k8s.io/gateway-api/conformance/utils/flags"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/consts"
	"sigs.k8s.io/gateway-api/pkg/features"
	"sigs.k8s.io/yaml"

	"github.com/ambient-mesh/ambient/api/mesh"
	"github.com/ambient-mesh/ambient/internal/version"
)

// waypointName is the waypoint of the suite's mesh namespace (istioctl waypoint apply's default
// name).
const waypointName = "waypoint"

// profiles are the conformance profiles of a mesh. Each implies its core features: Mesh and
// HTTPRoute for MESH-HTTP, Mesh and GRPCRoute for MESH-GRPC.
var profiles = []suite.ConformanceProfileName{
	suite.MeshHTTPConformanceProfileName,
	suite.MeshGRPCConformanceProfileName,
}

// supportedFeatures are the features the mesh claims beyond its profiles' core ones: what
// istiod-lite translates from HTTPRoutes (istiod-lite/model/httproutes.go) and the waypoint
// applies (waypoint/route). The suite runs the tests of these and of the core features, and
// reports the rest as not supported.
var supportedFeatures = []features.FeatureName{
	features.SupportMesh,
	features.SupportHTTPRoute,
	// The waypoint takes a tunnel for the Service whose VIP the client dialled, whatever the
	// Host header says.
	features.SupportMeshClusterIPMatching,
	// Rules of a route in another namespace than its parent Service apply to that namespace's
	// clients only (Rule.consumer_namespace).
	features.SupportMeshConsumerRoute,
	features.SupportMeshHTTPRouteRewritePath,
	features.SupportMeshHTTPRouteSchemeRedirect,
	features.SupportMeshHTTPRouteRedirectPort,
	features.SupportMeshHTTPRouteRedirectPath,
	features.SupportMeshHTTPRouteBackendRequestHeaderModification,
	features.SupportMeshHTTPRouteQueryParamMatching,
	features.SupportMeshHTTPRouteNamedRouteRule,
	// HTTPRoute features that some mesh tests need besides Mesh ones (MeshFrontend, MeshPorts,
	// MeshConsumerRoute, MeshHTTPRoute30xRedirect). The report leaves those tests out: their
	// features are in no mesh profile.
	features.SupportHTTPRouteResponseHeaderModification,
	features.SupportHTTPRouteParentRefPort,
	features.SupportHTTPRoute303RedirectStatusCode,
	features.SupportHTTPRoute307RedirectStatusCode,
	features.SupportHTTPRoute308RedirectStatusCode,
}

// TestConformance runs the suite as Istio runs it for ambient mode
// (tests/integration/ambient/gateway_conformance_test.go in istio/istio): the suite's namespaces
// join the mesh through NamespaceLabels (istio.io/dataplane-mode=ambient); after Setup has
// deployed the mesh manifests, the mesh namespace gets a waypoint and is bound to it
// (istio.io/use-waypoint); then Run, and the report. Flags given after -args (the suite's own,
// conformance/utils/flags) override what is set here, as for any implementation.
func TestConformance(t *testing.T) {
	opts := options(t)
	if opts.ReportOutputPath != "" {
		if err := opts.Implementation.Validate(); err != nil {
			t.Fatalf("implementation details: %v", err)
		}
	}
	t.Log("Running conformance tests with:")
	t.Logf("  GatewayClass: %s, Mode: %s, Profiles: %v", opts.GatewayClassName, opts.Mode, opts.ConformanceProfiles)
	t.Logf("  Supported Features: %v, Exempt: %v, All: %t", opts.SupportedFeatures, opts.ExemptFeatures, opts.EnableAllSupportedFeatures)
	t.Logf("  Namespace labels: %v; Cleanup Base Resources: %t, Test Resources: %t; Debug: %t",
		opts.NamespaceLabels, opts.CleanupBaseResources, opts.CleanupTestResources, opts.Debug)
	t.Logf("  Implementation: %+v; report: %s", opts.Implementation, opts.ReportOutputPath)

	cSuite, err := suite.NewConformanceTestSuite(opts)
	if err != nil {
		t.Fatalf("conformance suite: %v", err)
	}
	if opts.ReportOutputPath != "" {
		// As RunConformanceWithOptions: after Run has finished (cleanups run last-in first-out).
		t.Cleanup(func() {
			report, err := cSuite.Report()
			if err != nil {
				t.Errorf("conformance report: %v", err)
				return
			}
			if err := writeReport(t, report, opts.ReportOutputPath); err != nil {
				t.Errorf("conformance report: %v", err)
			}
		})
	}
	cSuite.Setup(t, tests.ConformanceTests)
	addWaypoint(t, opts.Client)
	if err := cSuite.Run(t, tests.ConformanceTests); err != nil {
		t.Fatal(err)
	}
}

// options are the suite's defaults for a run from the command line (DefaultOptions: clients
// from KUBECONFIG, the suite's manifests, its flags and options file), then this
// implementation's settings, then again the flags given on the command line, which win.
func options(t *testing.T) suite.ConformanceOptions {
	opts := gwconformance.DefaultOptions(t)
	c := &opts.ConfigurableOptions
	// Mesh tests use no GatewayClass: the suite checks it (Accepted) only when Gateway features
	// are supported. Named for what the mesh's Gateways are: waypoints.
	c.GatewayClassName = mesh.WaypointGatewayClass
	c.Mode = flags.DefaultMode
	c.ConformanceProfiles = profiles
	c.SupportedFeatures = supportedFeatures
	c.NamespaceLabels = map[string]string{mesh.LabelDataplaneMode: mesh.DataplaneModeAmbient}
	c.CleanupBaseResources = true
	c.Implementation = confv1.Implementation{
		Organization: "ambient-mesh",
		Project:      "ambient",
		URL:          "https://github.com/ambient-mesh/ambient",
		Version:      implementationVersion(),
		Contact:      []string{"https://github.com/ambient-mesh/ambient/issues/new"},
	}
	c.ReportOutputPath = filepath.Join(labCfg.Root, "conformance", "reports", consts.BundleVersion, "ambient-mesh-report.yaml")
	if p := os.Getenv("AMBIENT_CONFORMANCE_REPORT"); p != "" { // make test's, not the committed one
		c.ReportOutputPath = p
	}
	flags.ApplyAll(c)
	return opts
}

// implementationVersion is the version the mesh's binaries report: the release set at link
// time, else what make sets it to (git describe --tags --always --dirty), else version.String.
func implementationVersion() string {
	if version.Release != "" {
		return version.Release
	}
	cmd := exec.Command("git", "describe", "--tags", "--always", "--dirty")
	cmd.Dir = labCfg.Root
	if out, err := cmd.Output(); err == nil && strings.TrimSpace(string(out)) != "" {
		return strings.TrimSpace(string(out))
	}
	return version.String()
}

// addWaypoint gives the suite's mesh namespace a waypoint and binds the namespace to it, once
// Setup has created it, and waits until its Services are bound and every pod of the mesh
// namespaces is redirected. The consumer namespace needs none: its pods are only clients, and
// a request goes through the waypoint of the Service it is for.
func addWaypoint(t *testing.T, c client.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := suite.MeshNamespace
	if err := c.Get(ctx, types.NamespacedName{Name: ns}, &corev1.Namespace{}); apierrors.IsNotFound(err) {
		t.Logf("no namespace %s (no mesh test to run): no waypoint", ns)
		return
	} else if err != nil {
		t.Fatal(err)
	}
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: waypointName, Namespace: ns},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: mesh.WaypointGatewayClass,
			Listeners: []gatewayv1.Listener{{
				Name: mesh.WaypointListenerName, Port: mesh.PortHBONE, Protocol: mesh.WaypointListenerProtocolHB,
			}},
		},
	}
	if err := c.Create(ctx, gw); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("waypoint %s/%s: %v", ns, waypointName, err)
	}
	check := func(what string, cond func() (bool, string)) {
		t.Helper()
		if err := waitFor(ctx, 3*time.Minute, what, cond); err != nil {
			t.Fatal(err)
		}
	}
	check("the waypoint Programmed and its pod ready", func() (bool, string) {
		var g gatewayv1.Gateway
		if err := c.Get(ctx, client.ObjectKeyFromObject(gw), &g); err != nil {
			return false, err.Error()
		}
		if !meta.IsStatusConditionTrue(g.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed)) {
			return false, "not Programmed"
		}
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels{"gateway.networking.k8s.io/gateway-name": waypointName}); err != nil {
			return false, err.Error()
		}
		for i := range pods.Items {
			if pods.Items[i].DeletionTimestamp == nil && podReady(&pods.Items[i]) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d waypoint pods, none ready", len(pods.Items))
	})
	patch := fmt.Appendf(nil, `{"metadata":{"labels":{%q:%q}}}`, mesh.LabelUseWaypoint, waypointName)
	if err := c.Patch(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, client.RawPatch(types.MergePatchType, patch)); err != nil {
		t.Fatalf("bind namespace %s to its waypoint: %v", ns, err)
	}
	check("the mesh namespace's Services bound to the waypoint", func() (bool, string) {
		var svcs corev1.ServiceList
		if err := c.List(ctx, &svcs, client.InNamespace(ns)); err != nil {
			return false, err.Error()
		}
		var unbound []string
		for _, s := range svcs.Items {
			if _, own := s.Labels["gateway.networking.k8s.io/gateway-name"]; own {
				continue // the waypoint's own Service
			}
			if !meta.IsStatusConditionTrue(s.Status.Conditions, "istio.io/WaypointBound") {
				unbound = append(unbound, s.Name)
			}
		}
		return len(unbound) == 0, "not bound: " + strings.Join(unbound, ", ")
	})
	check("every pod of the mesh namespaces redirected", func() (bool, string) {
		var pending []string
		for _, n := range []string{suite.MeshNamespace, suite.MeshConsumerNamespace} {
			var pods corev1.PodList
			if err := c.List(ctx, &pods, client.InNamespace(n)); err != nil {
				return false, err.Error()
			}
			for _, p := range pods.Items {
				if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || p.Labels[mesh.LabelDataplaneMode] == mesh.DataplaneModeNone {
					continue // the waypoint's pods are labelled none
				}
				if p.Annotations[mesh.AnnotationRedirection] != mesh.RedirectionEnabled {
					pending = append(pending, n+"/"+p.Name)
				}
			}
		}
		return len(pending) == 0, "not yet: " + strings.Join(pending, ", ")
	})
}

// writeReport writes the report as the suite does (RunConformanceWithOptions), creating its
// directory.
func writeReport(t *testing.T, report *confv1.ConformanceReport, path string) error {
	b, err := yaml.Marshal(report)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return err
	}
	t.Logf("Conformance report written to %s:\n%s", path, b)
	return nil
}
