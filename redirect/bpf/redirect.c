// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Socket-level redirection into the in-pod proxy (DESIGN.md §5). Map key and value
// formats are described in ../README.md and mirrored by the Go types in ../maps.go.
//
// Fail-closed rule: whenever a socket in an enrolled network namespace would be
// redirected but cannot be (no pod address of its family, map full), the connect or
// the SYN is refused, never let through to its original destination.

#include "uapi.h"
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define PORT_OUTBOUND 15001 /* api/mesh.PortOutbound */
#define PORT_HBONE 15008 /* api/mesh.PortHBONE */

/* Reads a context field with one load of its own size: the verifier rejects the pointer
 * arithmetic clang otherwise emits for arrays in context structs. */
#define CTX_READ(f) (*(volatile typeof(f) *)&(f))

#define LISTENER_INBOUND 0 /* proxy's inbound plaintext listener (15006) */
#define LISTENER_HBONE 1 /* proxy's HBONE listener (15008) */
#define NOT_CAPTURED -1 /* inbound_kind: the connection goes to its socket, not the proxy */

/* How many cgroup levels below the root proxy_exempt looks at. A Kubernetes pod's containers sit
 * 4 to 6 levels deep (kubepods.slice/kubepods-<qos>.slice/<pod>.slice/<container>.scope under
 * the node's root, or a few more under a nested node's subtree); a proxy whose pod cgroup is
 * deeper than this is not exempted, so its connections loop back to itself: visible at once,
 * never a bypass. */
#define MAX_CGROUP_LEVEL 16

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* Verdicts of the cgroup sock_addr hooks. */
#define SOCK_ALLOW 1
#define SOCK_REJECT 0

/* An enrolled pod network namespace, keyed by its netns cookie. */
struct pod {
	__u32 ip4; /* network byte order */
	__u32 ip6[4]; /* network byte order */
	__u8 has_ip4;
	__u8 has_ip6;
	__u16 _pad;
};

/* An address: IPv4 is stored IPv4-mapped (::ffff:a.b.c.d); port in host byte order. */
struct addr {
	__u32 ip[4];
	__u16 port;
	__u16 _pad;
};

struct probe_port_key {
	__u64 netns;
	__u16 port;
	__u16 _pad[3];
};

struct probe_src_key {
	__u64 netns;
	__u32 ip[4];
};

struct listener_key {
	__u64 netns;
	__u32 kind;
	__u32 _pad;
};

/* The cookie of the network namespace a copy of steer_sk_lookup and drop_syn is attached to.
 * sk_lookup programs cannot call bpf_get_netns_cookie (nor tc programs before Linux 6.15), so
 * the loader sets this per namespace (one copy of the programs per enrolled namespace). */
volatile const __u64 pod_netns = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct pod);
} enrolled SEC(".maps");

/* Original destination of a captured socket, by socket cookie; lives until the socket closes. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct addr);
} orig_by_cookie SEC(".maps");

/* Original destination by the captured socket's source address (the proxy's peer);
 * deleted by the proxy when it consumes it and by sockops when the socket closes. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct addr);
	__type(value, struct addr);
} orig_by_peer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct probe_port_key);
	__type(value, __u8);
} probe_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct probe_src_key);
	__type(value, __u8);
} probe_srcs SEC(".maps");

/* Cgroups whose sockets are the proxy's own and are never captured: ztunnel's pod cgroup, by
 * cgroup v2 id (the kernfs inode number). A socket created in one of them or in any descendant
 * (the pod's containers) is exempt. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} proxy_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 32768);
	__type(key, struct listener_key);
	__type(value, __u64);
} listeners SEC(".maps");

static __always_inline int is_v4_mapped(const __u32 ip[4])
{
	return ip[0] == 0 && ip[1] == 0 && ip[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int is_loopback4(__u32 ip)
{
	return (bpf_ntohl(ip) >> 24) == 127;
}

static __always_inline int is_loopback6(const __u32 ip[4])
{
	return ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == bpf_htonl(1);
}

static __always_inline int is_any6(const __u32 ip[4])
{
	return (ip[0] | ip[1] | ip[2] | ip[3]) == 0;
}

static __always_inline void set_mapped(__u32 ip[4], __u32 ip4)
{
	ip[0] = 0;
	ip[1] = 0;
	ip[2] = bpf_htonl(0x0000ffff);
	ip[3] = ip4;
}

/* proxy_exempt reports whether the task calling connect() runs in a proxy cgroup or a
 * descendant of one. It would rather ask who created the socket (the socket's cgroup), but cgroup
 * sock_addr programs may not call bpf_sk_cgroup_id or bpf_sk_ancestor_cgroup_id (the verifier
 * refuses them), so it asks who connects it: the same task unless a proxy hands a socket to
 * another process. Neither the socket mark nor anything else an app can set on its own socket
 * exempts it; only running in the proxy's cgroup does. */
static __always_inline int proxy_exempt(void)
{
	__u64 id;
	int level;

	/* Level 0 is the root, never registered; level n exists if the task is n levels deep. */
	for (level = 1; level <= MAX_CGROUP_LEVEL; level++) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			return 0; /* past the task's own cgroup */
		if (bpf_map_lookup_elem(&proxy_cgroups, &id))
			return 1;
	}
	return 0;
}

/* enrolled_pod returns the pod of a TCP connect() to consider for capture: its netns is
 * enrolled and the socket is not the proxy's. */
static __always_inline struct pod *enrolled_pod(struct bpf_sock_addr *ctx)
{
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct bpf_sock *sk;

	if (ctx->type != SOCK_STREAM)
		return 0;
	struct pod *pod = bpf_map_lookup_elem(&enrolled, &netns);
	if (!pod)
		return 0;
	sk = ctx->sk;
	/* Only connects in enrolled namespaces pay for the cgroup walk. */
	if (!sk || proxy_exempt())
		return 0;
	return pod;
}

static __always_inline int remember(struct bpf_sock_addr *ctx, struct addr *orig)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);

	return bpf_map_update_elem(&orig_by_cookie, &cookie, orig, BPF_ANY);
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	struct pod *pod = enrolled_pod(ctx);
	struct addr orig = {};
	__u32 dst;

	if (!pod)
		return SOCK_ALLOW;
	dst = ctx->user_ip4;
	if (dst == 0 || is_loopback4(dst))
		return SOCK_ALLOW;
	if (!pod->has_ip4)
		return SOCK_REJECT;
	if (dst == pod->ip4)
		return SOCK_ALLOW;

	set_mapped(orig.ip, dst);
	orig.port = bpf_ntohs(ctx->user_port);
	if (remember(ctx, &orig))
		return SOCK_REJECT;
	ctx->user_ip4 = pod->ip4;
	ctx->user_port = bpf_htons(PORT_OUTBOUND);
	return SOCK_ALLOW;
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	struct pod *pod = enrolled_pod(ctx);
	struct addr orig = {};
	__u32 dst[4];

	if (!pod)
		return SOCK_ALLOW;
	dst[0] = CTX_READ(ctx->user_ip6[0]);
	dst[1] = CTX_READ(ctx->user_ip6[1]);
	dst[2] = CTX_READ(ctx->user_ip6[2]);
	dst[3] = CTX_READ(ctx->user_ip6[3]);

	if (is_v4_mapped(dst)) {
		if (dst[3] == 0 || is_loopback4(dst[3]))
			return SOCK_ALLOW;
		if (!pod->has_ip4)
			return SOCK_REJECT;
		if (dst[3] == pod->ip4)
			return SOCK_ALLOW;
	} else {
		if (is_any6(dst) || is_loopback6(dst))
			return SOCK_ALLOW;
		if (!pod->has_ip6)
			return SOCK_REJECT;
		if (dst[0] == pod->ip6[0] && dst[1] == pod->ip6[1] && dst[2] == pod->ip6[2] &&
		    dst[3] == pod->ip6[3])
			return SOCK_ALLOW;
	}

	orig.ip[0] = dst[0];
	orig.ip[1] = dst[1];
	orig.ip[2] = dst[2];
	orig.ip[3] = dst[3];
	orig.port = bpf_ntohs(ctx->user_port);
	if (remember(ctx, &orig))
		return SOCK_REJECT;

	if (is_v4_mapped(dst)) {
		ctx->user_ip6[3] = pod->ip4;
	} else {
		ctx->user_ip6[0] = pod->ip6[0];
		ctx->user_ip6[1] = pod->ip6[1];
		ctx->user_ip6[2] = pod->ip6[2];
		ctx->user_ip6[3] = pod->ip6[3];
	}
	ctx->user_port = bpf_htons(PORT_OUTBOUND);
	return SOCK_ALLOW;
}

SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct addr *orig = bpf_map_lookup_elem(&orig_by_cookie, &cookie);

	if (orig && is_v4_mapped(orig->ip)) {
		ctx->user_ip4 = orig->ip[3];
		ctx->user_port = bpf_htons(orig->port);
	}
	return SOCK_ALLOW;
}

SEC("cgroup/getpeername6")
int getpeername6(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct addr *orig = bpf_map_lookup_elem(&orig_by_cookie, &cookie);

	if (orig) {
		ctx->user_ip6[0] = orig->ip[0];
		ctx->user_ip6[1] = orig->ip[1];
		ctx->user_ip6[2] = orig->ip[2];
		ctx->user_ip6[3] = orig->ip[3];
		ctx->user_port = bpf_htons(orig->port);
	}
	return SOCK_ALLOW;
}

static __always_inline void local_addr(struct bpf_sock_ops *ops, struct addr *a)
{
	if (ops->family == AF_INET) {
		set_mapped(a->ip, ops->local_ip4);
	} else {
		a->ip[0] = CTX_READ(ops->local_ip6[0]);
		a->ip[1] = CTX_READ(ops->local_ip6[1]);
		a->ip[2] = CTX_READ(ops->local_ip6[2]);
		a->ip[3] = CTX_READ(ops->local_ip6[3]);
	}
	a->port = ops->local_port;
}

SEC("sockops")
int track_sockops(struct bpf_sock_ops *ops)
{
	struct addr peer = {};
	struct addr *orig;
	__u64 cookie;

	switch (ops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		/* Every TCP connect on the node comes here; only one connect4/6 rewrote to the
		 * proxy's port can have an entry. Testing the port first spares the others a socket
		 * cookie and a map lookup. remote_port holds the network-order port in its upper
		 * half on little-endian hosts (an ABI quirk), in its lower half elsewhere. */
		if (ops->remote_port != bpf_htons(PORT_OUTBOUND) &&
		    ops->remote_port != (__u32)bpf_htons(PORT_OUTBOUND) << 16)
			break;
		/* The source port is bound now and the SYN not yet sent, so the entry exists
		 * before the proxy can accept the connection. */
		cookie = bpf_get_socket_cookie(ops);
		orig = bpf_map_lookup_elem(&orig_by_cookie, &cookie);
		if (!orig)
			break;
		local_addr(ops, &peer);
		bpf_map_update_elem(&orig_by_peer, &peer, orig, BPF_ANY);
		bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (ops->args[1] != BPF_TCP_CLOSE)
			break;
		cookie = bpf_get_socket_cookie(ops);
		bpf_map_delete_elem(&orig_by_cookie, &cookie);
		local_addr(ops, &peer);
		bpf_map_delete_elem(&orig_by_peer, &peer);
		break;
	}
	return 1;
}

/* inbound_kind returns the proxy listener a new inbound TCP connection to port belongs to, or
 * NOT_CAPTURED. src is the peer, IPv4 as IPv4-mapped; its netns is set here. steer_sk_lookup and
 * drop_syn decide through this one function, so they cannot disagree. */
static __always_inline int inbound_kind(const struct pod *pod, __u64 netns, struct probe_src_key *src,
					__u16 port)
{
	struct probe_port_key pk = {};

	/* Connections from inside the pod (the proxy's own to the app, the app's to itself) have
	 * a loopback or pod source address; ingress_ifindex does not tell, as the kernel reports
	 * the pod interface for traffic to the pod's own address. A packet from outside with such
	 * a source is dropped as martian (IPv4) and cannot complete a handshake (the SYN-ACK is
	 * delivered locally). */
	if (is_loopback6(src->ip))
		return NOT_CAPTURED;
	if (is_v4_mapped(src->ip) &&
	    (is_loopback4(src->ip[3]) || (pod->has_ip4 && src->ip[3] == pod->ip4)))
		return NOT_CAPTURED;
	if (pod->has_ip6 && src->ip[0] == pod->ip6[0] && src->ip[1] == pod->ip6[1] &&
	    src->ip[2] == pod->ip6[2] && src->ip[3] == pod->ip6[3])
		return NOT_CAPTURED;

	/* Health probes from the node to a declared probe port reach the app directly. */
	pk.netns = netns;
	pk.port = port;
	src->netns = netns;
	if (bpf_map_lookup_elem(&probe_ports, &pk) && bpf_map_lookup_elem(&probe_srcs, src))
		return NOT_CAPTURED;

	return port == PORT_HBONE ? LISTENER_HBONE : LISTENER_INBOUND;
}

SEC("sk_lookup")
int steer_sk_lookup(struct bpf_sk_lookup *ctx)
{
	struct probe_src_key src = {};
	struct listener_key lk = {};
	struct bpf_sock *sk;
	struct pod *pod;
	__u64 netns;
	long err;
	int kind;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	if (ctx->ingress_ifindex == LOOPBACK_IFINDEX)
		return SK_PASS;

	netns = pod_netns;
	pod = bpf_map_lookup_elem(&enrolled, &netns);
	if (!pod)
		return SK_PASS;

	if (ctx->family == AF_INET) {
		set_mapped(src.ip, ctx->remote_ip4);
	} else {
		src.ip[0] = CTX_READ(ctx->remote_ip6[0]);
		src.ip[1] = CTX_READ(ctx->remote_ip6[1]);
		src.ip[2] = CTX_READ(ctx->remote_ip6[2]);
		src.ip[3] = CTX_READ(ctx->remote_ip6[3]);
	}
	kind = inbound_kind(pod, netns, &src, ctx->local_port);
	if (kind == NOT_CAPTURED)
		return SK_PASS;

	lk.netns = netns;
	lk.kind = kind;
	sk = bpf_map_lookup_elem(&listeners, &lk);
	if (!sk)
		return SK_DROP;
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	/* Fail closed: no proxy, no connection. drop_syn has already dropped the SYN silently
	 * when there is no listener; SK_DROP, which TCP answers with a RST, is left for a listener
	 * that closed in between and for packets drop_syn does not see (see ../README.md). */
	return err ? SK_DROP : SK_PASS;
}

/* The headers drop_syn reads, up to the fields it needs. */
struct ipv4_head {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__be32 saddr;
	__be32 daddr;
};

struct ipv6_head {
	__be32 ver_tc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u32 saddr[4];
	__u32 daddr[4];
};

struct tcp_head {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff;
	__u8 flags;
};

/* drop_syn runs at tcx ingress of the pod's interfaces, before the packet reaches TCP's socket
 * lookup (and steer_sk_lookup). It drops a SYN that steer_sk_lookup would steer to a proxy
 * listener that is not registered, so the client retransmits instead of getting a RST from
 * the SK_DROP; everything else goes on to the next program or the stack. The decision is the
 * one of steer_sk_lookup, restricted to packets addressed to the pod's own addresses. */
SEC("tcx/ingress")
int drop_syn(struct __sk_buff *skb)
{
	struct probe_src_key src = {};
	struct listener_key lk = {};
	struct tcp_head th;
	struct bpf_sock *sk;
	struct pod *pod;
	__u32 l4, daddr4 = 0, daddr6[4] = {};
	__u64 netns;
	int kind, v4;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct ipv4_head ip;

		if (bpf_skb_load_bytes_relative(skb, 0, &ip, sizeof(ip), BPF_HDR_START_NET))
			return TCX_NEXT;
		/* Only the first fragment has the TCP header; the rest cannot complete without it. */
		if (ip.protocol != IPPROTO_TCP || (ip.frag_off & bpf_htons(0x1fff)))
			return TCX_NEXT;
		l4 = (ip.ver_ihl & 0xf) * 4;
		set_mapped(src.ip, ip.saddr);
		daddr4 = ip.daddr;
		v4 = 1;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6_head ip;

		if (bpf_skb_load_bytes_relative(skb, 0, &ip, sizeof(ip), BPF_HDR_START_NET))
			return TCX_NEXT;
		/* Extension headers are not walked: such a SYN meets steer_sk_lookup alone. */
		if (ip.nexthdr != IPPROTO_TCP)
			return TCX_NEXT;
		l4 = sizeof(ip);
		__builtin_memcpy(src.ip, ip.saddr, sizeof(src.ip));
		__builtin_memcpy(daddr6, ip.daddr, sizeof(daddr6));
		v4 = 0;
	} else {
		return TCX_NEXT;
	}
	if (bpf_skb_load_bytes_relative(skb, l4, &th, sizeof(th), BPF_HDR_START_NET))
		return TCX_NEXT;
	if ((th.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
		return TCX_NEXT;

	netns = pod_netns;
	pod = bpf_map_lookup_elem(&enrolled, &netns);
	if (!pod)
		return TCX_NEXT;
	if (v4) {
		if (!pod->has_ip4 || daddr4 != pod->ip4)
			return TCX_NEXT;
	} else {
		if (!pod->has_ip6 || daddr6[0] != pod->ip6[0] || daddr6[1] != pod->ip6[1] ||
		    daddr6[2] != pod->ip6[2] || daddr6[3] != pod->ip6[3])
			return TCX_NEXT;
	}

	kind = inbound_kind(pod, netns, &src, bpf_ntohs(th.dest));
	if (kind == NOT_CAPTURED)
		return TCX_NEXT;
	lk.netns = netns;
	lk.kind = kind;
	sk = bpf_map_lookup_elem(&listeners, &lk);
	if (!sk)
		return TCX_DROP; /* fail closed, silently: the client retransmits */
	bpf_sk_release(sk);
	return TCX_NEXT;
}

char _license[] SEC("license") = "Dual BSD/GPL";
