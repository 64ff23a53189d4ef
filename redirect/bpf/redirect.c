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

#define SOCKET_MARK 0x539 /* api/mesh.SocketMark */
#define PORT_OUTBOUND 15001 /* api/mesh.PortOutbound */
#define PORT_HBONE 15008 /* api/mesh.PortHBONE */

/* Reads a context field with one load of its own size: the verifier rejects the pointer
 * arithmetic clang otherwise emits for arrays in context structs. */
#define CTX_READ(f) (*(volatile typeof(f) *)&(f))

#define LISTENER_INBOUND 0 /* proxy's inbound plaintext listener (15006) */
#define LISTENER_HBONE 1 /* proxy's HBONE listener (15008) */
#define LISTENER_BLACKHOLE 2 /* a listener whose socket filter drops every packet */

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

/* The cookie of the network namespace a copy of steer_sk_lookup is attached to. sk_lookup
 * programs cannot call bpf_get_netns_cookie, so the loader sets this per namespace
 * (one program per enrolled namespace). */
volatile const __u64 sk_lookup_netns = 0;

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

/* capture_ok reports whether a connect() from this socket may be considered at all. */
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
	if (!sk || sk->mark == SOCKET_MARK)
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

SEC("sk_lookup")
int steer_sk_lookup(struct bpf_sk_lookup *ctx)
{
	struct probe_port_key pk = {};
	struct probe_src_key src = {};
	struct listener_key lk = {};
	struct bpf_sock *sk;
	struct pod *pod;
	__u64 netns;
	long err;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	if (ctx->ingress_ifindex == LOOPBACK_IFINDEX)
		return SK_PASS;

	netns = sk_lookup_netns;
	pod = bpf_map_lookup_elem(&enrolled, &netns);
	if (!pod)
		return SK_PASS;

	/* Connections from inside the pod (the proxy's own to the app, the app's to itself) have
	 * a loopback or pod source address; ingress_ifindex does not tell, as the kernel reports
	 * the pod interface for traffic to the pod's own address. A packet from outside with such
	 * a source is dropped as martian (IPv4) and cannot complete a handshake (the SYN-ACK is
	 * delivered locally). */
	if (ctx->family == AF_INET) {
		__u32 ip = ctx->remote_ip4;

		if (is_loopback4(ip) || (pod->has_ip4 && ip == pod->ip4))
			return SK_PASS;
		set_mapped(src.ip, ip);
	} else {
		src.ip[0] = CTX_READ(ctx->remote_ip6[0]);
		src.ip[1] = CTX_READ(ctx->remote_ip6[1]);
		src.ip[2] = CTX_READ(ctx->remote_ip6[2]);
		src.ip[3] = CTX_READ(ctx->remote_ip6[3]);
		if (is_loopback6(src.ip))
			return SK_PASS;
		if (is_v4_mapped(src.ip) &&
		    (is_loopback4(src.ip[3]) || (pod->has_ip4 && src.ip[3] == pod->ip4)))
			return SK_PASS;
		if (pod->has_ip6 && src.ip[0] == pod->ip6[0] && src.ip[1] == pod->ip6[1] &&
		    src.ip[2] == pod->ip6[2] && src.ip[3] == pod->ip6[3])
			return SK_PASS;
	}

	/* Health probes from the node to a declared probe port reach the app directly. */
	pk.netns = netns;
	pk.port = ctx->local_port;
	src.netns = netns;
	if (bpf_map_lookup_elem(&probe_ports, &pk) && bpf_map_lookup_elem(&probe_srcs, &src))
		return SK_PASS;

	lk.netns = netns;
	lk.kind = ctx->local_port == PORT_HBONE ? LISTENER_HBONE : LISTENER_INBOUND;
	sk = bpf_map_lookup_elem(&listeners, &lk);
	if (sk) {
		err = bpf_sk_assign(ctx, sk, 0);
		bpf_sk_release(sk);
		if (!err)
			return SK_PASS;
	}
	/* Fail closed: no proxy, no connection. SK_DROP alone makes TCP answer with a RST; the
	 * blackhole listener, when registered, swallows the SYN so that the client retries. */
	lk.kind = LISTENER_BLACKHOLE;
	sk = bpf_map_lookup_elem(&listeners, &lk);
	if (!sk)
		return SK_DROP;
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
