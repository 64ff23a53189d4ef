package server

import (
	"net/netip"
	"sync"

	workloadv1 "github.com/ambient-mesh/ambient/api/workload/v1"
	"github.com/ambient-mesh/ambient/ztunnel/proxy"
	"github.com/ambient-mesh/ambient/ztunnel/xdsclient"
)

// lookup is one xDS State seen as the proxy's Config, with the index from a Service to the
// workloads that serve it, which the route needs and the State does not keep.
type lookup struct {
	st        *xdsclient.State
	endpoints map[string][]*workloadv1.Workload
}

func newLookup(st *xdsclient.State) *lookup {
	l := &lookup{st: st, endpoints: map[string][]*workloadv1.Workload{}}
	for _, w := range st.Workloads() {
		for key := range w.Services {
			l.endpoints[key] = append(l.endpoints[key], w)
		}
	}
	return l
}

func (l *lookup) WorkloadByAddr(a netip.Addr) *workloadv1.Workload    { return l.st.WorkloadByAddr(a) }
func (l *lookup) ServiceByAddr(ap netip.AddrPort) *workloadv1.Service { return l.st.ServiceByVIP(ap) }
func (l *lookup) Endpoints(key string) []*workloadv1.Workload         { return l.endpoints[key] }
func (l *lookup) ServiceByName(key string) *workloadv1.Service        { return l.st.Service(key) }
func (l *lookup) WorkloadByUID(uid string) *workloadv1.Workload       { return l.st.Workload(uid) }

// current gives the lookup of the store's latest State, built once per State.
type current struct {
	store *xdsclient.Store
	mu    sync.Mutex
	last  *lookup
}

func (c *current) get() proxy.Config {
	st := c.store.Load()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last == nil || c.last.st != st {
		c.last = newLookup(st)
	}
	return c.last
}
