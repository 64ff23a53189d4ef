package authz_test

import (
	"fmt"
	"net/netip"
	"sync/atomic"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/ztunnel/authz"
)

// A ztunnel compiles the Authorizations it receives and publishes them with one atomic store;
// connections accepted after the store are checked against the new policies.
func Example() {
	var current atomic.Pointer[authz.Policies]

	// A namespace's PeerAuthentication STRICT, as istiod-lite translates it.
	strict := &workloadv1.Authorization{
		Name: "peerauthn:default", Namespace: "server", Scope: workloadv1.Scope_WORKLOAD_SELECTOR, Action: workloadv1.Action_DENY,
		Rules: []*workloadv1.Rule{{Clauses: []*workloadv1.Clause{{Matches: []*workloadv1.Match{{
			NotPrincipals: []*workloadv1.StringMatch{{MatchType: &workloadv1.StringMatch_Presence{Presence: true}}},
		}}}}}},
	}
	p, err := authz.Compile([]*workloadv1.Authorization{strict})
	if err != nil {
		fmt.Println("NACK:", err) // and publish p anyway: it holds everything that could be used
	}
	current.Store(p)

	w := &workloadv1.Workload{Namespace: "server", AuthorizationPolicies: []string{"server/peerauthn:default"}}
	conn := authz.Conn{SrcIP: netip.MustParseAddr("10.0.0.5"), DstPort: 8080}
	fmt.Printf("%+v\n", current.Load().Check(authz.TargetOf(w), &conn))
	conn.Principal = "cluster.local/ns/client/sa/sleep"
	fmt.Printf("%+v\n", current.Load().Check(authz.TargetOf(w), &conn))
	// Output:
	// {Allow:false Reason:DENY policy matched Policy:server/peerauthn:default Audit:}
	// {Allow:true Reason:no ALLOW policy applies Policy: Audit:}
}
