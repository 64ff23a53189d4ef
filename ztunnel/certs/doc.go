// Package certs owns ztunnel's workload certificates: one per identity of the pods on its node,
// issued by istiod-lite's CA (DESIGN.md §3). The key is made here and never leaves the process;
// the CA sees a CSR. A certificate is fetched when the first pod of an identity arrives
// (Manager.Acquire), renewed at half of its validity, kept until it expires when renewal fails,
// and dropped when the last pod of the identity leaves.
//
// Every chain the CA answers is checked before it is served: the leaf is for the key made here,
// carries exactly the identity asked for, and verifies against the trust bundle now, for both
// server and client use. A bad answer counts as a failure and is retried.
//
// It must not decide which identities the node holds (the caller acquires and releases them),
// fetch the trust bundle (the caller passes a function returning it), or parse SPIFFE IDs
// (api/identity does). It never lets a connection through without a certificate: until the first
// one is there Get waits, bounded by its context, and then fails, and the connection is refused.
package certs
