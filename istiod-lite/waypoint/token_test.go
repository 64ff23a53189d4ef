package waypoint

import (
	"testing"

	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-mesh/ambient/api/mesh"
)

// TestWaypointToken: the waypoint pod gets a projected token of audience istio-ca, which is what
// istiod-lite accepts, and none for the API server.
func TestWaypointToken(t *testing.T) {
	g := &gwv1.Gateway{}
	g.Namespace, g.Name = "shop", "waypoint"
	_, dep, _ := Desired(g, Proxy{Image: "img"}, gwv1.Listener{Name: "mesh", Port: 15008, Protocol: "HBONE"})
	spec := dep.Spec.Template.Spec
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("the API server's token is mounted")
	}
	var aud string
	for _, v := range spec.Volumes {
		if v.Projected != nil {
			for _, src := range v.Projected.Sources {
				if src.ServiceAccountToken != nil && src.ServiceAccountToken.Path == "istio-token" {
					aud = src.ServiceAccountToken.Audience
				}
			}
		}
	}
	if aud != mesh.TokenAudience {
		t.Errorf("projected token audience %q, want %q", aud, mesh.TokenAudience)
	}
	mounts := map[string]string{}
	for _, m := range spec.Containers[0].VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	if len(mounts) != 2 || mounts[TokenDir] != "istio-token" || mounts[RootCertDir] != "root-cert" {
		t.Errorf("mounts %v, want the token at %s and the mesh's root at %s only", mounts, TokenDir, RootCertDir)
	}
}
