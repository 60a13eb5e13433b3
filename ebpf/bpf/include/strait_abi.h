/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every type shared between Strait's eBPF programs and user space.
 *
 * The Rust mirrors live in ebpf/src/abi.rs; its tests compile assertions
 * generated from the Rust layout against this header with `clang -target bpf`,
 * so a change here that is not made there (or the other way round) fails
 * `cargo test -p strait-ebpf`.
 *
 * Byte order: addresses and ports are stored in network byte order, exactly as
 * the kernel hands them to cgroup/connect4 (`user_ip4`, `user_port`), so the
 * programs copy them without conversion. Padding is explicit and always zero:
 * it is part of hash keys.
 */
#ifndef STRAIT_ABI_H
#define STRAIT_ABI_H

#include <linux/types.h>

/* --- sizes of the maps in maps.h (user space checks reused pins against them) */
#define STRAIT_CONFIG_MAX	1	/* strait_cfg: one entry, index 0 */
#define STRAIT_BYPASS_MAX	64	/* strait_bypass */
#define STRAIT_ORIG_MAX		65536	/* strait_orig_ck and strait_orig_tp (LRU) */
#define STRAIT_UDP_RNAT_MAX	65536	/* strait_udp_rnat (LRU) */
#define STRAIT_IPCACHE_MAX	65536	/* strait_ipcache (LPM trie) */
#define STRAIT_ENDPOINTS_MAX	4096	/* strait_endpoint */
#define STRAIT_POD_IFS_MAX	4096	/* strait_pod_ifs */
#define STRAIT_POLICED_MAX	16384	/* strait_policed */
#define STRAIT_VIA_PROXY_MAX	4096	/* strait_viaproxy */
#define STRAIT_POLICY_MAX	262144	/* strait_policy (LPM trie) */
#define STRAIT_SVC_MAX		4096	/* strait_svc_ids */
#define STRAIT_SVC_BACKENDS_MAX	64	/* backends per strait_svc_entry */
#define STRAIT_CT_MAX		65536	/* strait_ct (LRU) */
#define STRAIT_FRAG_MAX		8192	/* strait_frags (LRU) */
#define STRAIT_EVENTS_BYTES	262144	/* strait_events ring buffer (256 KiB) */
#define STRAIT_FLOW_EVENTS_BYTES 1048576	/* strait_flowev ring buffer (1 MiB) */
#define STRAIT_DROP_COUNTERS	256	/* strait_drops: one per-CPU counter per reason */

/* --- strait_config.flags */
/* Redirection switched off on purpose: every connect passes unchanged. */
#define STRAIT_CFG_DISABLED	(1U << 0)
/*
 * Kernel fast path off: every pod TCP connect goes to the node proxy, as
 * before the fast path existed (for debugging and for measuring the proxy).
 */
#define STRAIT_CFG_NO_FAST_PATH	(1U << 1)

/*
 * The one entry of the strait_cfg array map.
 * proxy_ip4 == 0 means "not configured yet": connect4 then fails closed
 * (connect() returns EPERM) instead of letting a pod bypass the proxy.
 */
struct strait_config {
	__be32 proxy_ip4;	/* node proxy outbound listener, network order */
	__be16 proxy_port;	/* network order */
	__u16 pad;		/* zero */
	__u32 flags;		/* STRAIT_CFG_* */
	/*
	 * Bumped by user space after every policy change it installs: a tracked
	 * flow (strait_ct) allowed under an older revision is judged again.
	 */
	__u32 policy_rev;
};
_Static_assert(sizeof(struct strait_config) == 16, "strait_config layout");

/* Where a redirected socket originally connected to (value of both orig maps). */
struct strait_orig_dst {
	__be32 ip4;		/* network order */
	__be16 port;		/* network order */
	__u16 pad;		/* zero */
};
_Static_assert(sizeof(struct strait_orig_dst) == 8, "strait_orig_dst layout");

/*
 * Key of strait_orig_tp: the client's side of a redirected connection, which
 * is what the proxy sees as the peer of the socket it accepted.
 */
struct strait_sock_key {
	__be32 ip4;		/* client local address, network order */
	__be16 port;		/* client local port, network order */
	__u16 pad;		/* zero: part of the hash key */
};
_Static_assert(sizeof(struct strait_sock_key) == 8, "strait_sock_key layout");

/*
 * Key of strait_udp_rnat: a UDP socket (its cookie) and the backend socket LB
 * sent its datagrams to. The value (struct strait_orig_dst) is the Service
 * frontend it dialed, which recvmsg4 and getpeername4 report instead of the
 * backend, so replies look as if they came from the address dialed.
 */
struct strait_udp_rnat_key {
	__u64 cookie;
	__be32 ip4;		/* the backend, network order */
	__be16 port;		/* network order */
	__u16 pad;		/* zero */
};
_Static_assert(sizeof(struct strait_udp_rnat_key) == 16, "strait_udp_rnat_key layout");

/*
 * A port of another cluster's identity whose ingress has L7 rules there: a
 * connection to it must leave through the node proxy (and the authenticated
 * tunnel), where the other cluster's node judges each request. port 0: every
 * port of the protocol.
 */
struct strait_via_proxy_key {
	__u32 identity;
	__be16 port;		/* network order; 0 = any port */
	__u8 protocol;		/* STRAIT_IPPROTO_TCP */
	__u8 pad;		/* zero */
};
_Static_assert(sizeof(struct strait_via_proxy_key) == 8, "strait_via_proxy_key layout");

/*
 * IP protocol numbers (the uapi headers need libc for these), as an X-macro
 * list: X(name, number). ebpf/build.rs reads this list and generates the Rust
 * side (`IPPROTO_*` constants and protocol names), so a protocol is added here
 * and nowhere else.
 */
#define STRAIT_IP_PROTOCOLS(X) \
	X(ICMP, 1) \
	X(TCP, 6) \
	X(UDP, 17) \
	X(SCTP, 132)

enum strait_ipproto {
#define STRAIT_IPPROTO_ENUM(name, number) STRAIT_IPPROTO_##name = number,
	STRAIT_IP_PROTOCOLS(STRAIT_IPPROTO_ENUM)
#undef STRAIT_IPPROTO_ENUM
};

/*
 * Reserved identities, numbered as Cilium numbers them: X(name, number,
 * "policy entity name"). ebpf/build.rs generates the Rust constants and names
 * from this list.
 */
#define STRAIT_RESERVED_IDENTITIES(X) \
	X(HOST, 1, "host")		/* the node itself: gateway address, proxy, DNS */ \
	X(WORLD, 2, "world")		/* any address strait_ipcache does not know */ \
	X(HEALTH, 4, "health")		/* health-check endpoints */ \
	X(INIT, 5, "init")		/* endpoints whose identity is not resolved yet */ \
	X(REMOTE_NODE, 6, "remote-node")	/* other nodes of the cluster */

/*
 * Identity ranges, as Cilium's: reserved identities below 256, identities of
 * workloads (pods, of any cluster) from 256, CIDR identities from 2^24. Only a
 * connection to a workload takes the kernel fast path; anything else (world,
 * CIDRs, nodes) goes through the proxy, which leaves from the node's address.
 */
#define STRAIT_ID_FIRST_WORKLOAD	256
#define STRAIT_ID_CIDR_BASE		(1U << 24)

enum strait_reserved_identity {
#define STRAIT_ID_ENUM(name, number, entity) STRAIT_ID_##name = number,
	STRAIT_RESERVED_IDENTITIES(STRAIT_ID_ENUM)
#undef STRAIT_ID_ENUM
};

/*
 * Key of strait_ipcache (LPM trie): IPv4 prefix -> identity (__u32 value).
 * Pod addresses are /32, CIDR identities their prefix, the node gateway /32
 * maps to STRAIT_ID_HOST. Missing -> STRAIT_ID_WORLD. Lookups use /32.
 */
struct strait_ipcache_key {
	__u32 prefixlen;	/* 0..=32 */
	__be32 ip4;		/* network order; bits past prefixlen zero */
};
_Static_assert(sizeof(struct strait_ipcache_key) == 8, "strait_ipcache_key layout");

/*
 * Value of strait_endpoint, keyed by the pod's cgroup v2 id (__u64, the inode
 * number of its cgroup directory, as bpf_get_current_cgroup_id() returns it).
 */
struct strait_endpoint {
	__u32 identity;
	__be32 ip4;		/* the pod's address, network order */
};
_Static_assert(sizeof(struct strait_endpoint) == 8, "strait_endpoint layout");

/*
 * Value of strait_pod_ifs, keyed by the ifindex (__u32) of a pod's host-side
 * veth: the only source address an IPv4 packet leaving that pod may carry,
 * and the pod's identity, which tc judges such packets by.
 */
struct strait_pod_if {
	__be32 ip4;		/* the pod's address, network order */
	__u32 identity;
};
_Static_assert(sizeof(struct strait_pod_if) == 8, "strait_pod_if layout");

/* --- strait_policed values (identity -> flags); an identity without an entry is not policed */
#define STRAIT_POLICED_INGRESS	(1U << 0)	/* traffic towards it needs a rule */
#define STRAIT_POLICED_EGRESS	(1U << 1)	/* traffic from it needs a rule */

/*
 * Key of strait_policy (LPM trie), as Cilium lays out its policy key
 * (bpf/lib/common.h): every field that is always matched exactly comes
 * first, the one that may be wildcarded last, so that a prefix length says
 * how much of the port is matched:
 *
 *   bits  0..31   src_identity   always exact
 *   bits 32..63   dst_identity   always exact
 *   bits 64..71   reserved       always zero, always inside the prefix
 *   bits 72..79   protocol       exact, or wildcarded (prefixlen 72: any protocol)
 *   bits 80..95   dport          network order: its high bits come first, so
 *                                prefixlen 80 + n matches a 2^(16-n) port range
 *
 * The identities are matched whole, so their byte order does not matter;
 * they are stored in host order. prefixlen: 72 (any protocol, any port),
 * 80 (one protocol, any port) .. 96 (one port). The datapath looks up with
 * prefixlen 96, so the longest stored prefix wins; "deny wins over allow" is
 * the writer's job (user space turns any allow covered by a deny into a deny).
 */
struct strait_policy_key {
	__u32 prefixlen;
	__u32 src_identity;
	__u32 dst_identity;
	__u8 reserved;		/* zero */
	__u8 protocol;		/* STRAIT_IPPROTO_*; zero when prefixlen is 72 */
	__be16 dport;		/* network order; bits past the prefix zero */
};
_Static_assert(sizeof(struct strait_policy_key) == 16, "strait_policy_key layout");

#define STRAIT_POLICY_PREFIX_ANY_PROTO	72	/* src + dst + reserved */
#define STRAIT_POLICY_PREFIX_ANY_PORT	80	/* ... + protocol */
#define STRAIT_POLICY_PREFIX_FULL	96	/* ... + all 16 bits of the port */

/* Value of strait_policy (__u32). */
enum strait_policy_action {
	STRAIT_POLICY_ALLOW = 1,
	STRAIT_POLICY_DENY = 2,
	/* Allowed at L4; the node proxy applies L7 rules. An allow for the kernel. */
	STRAIT_POLICY_PROXY = 3,
};

/* Key of strait_svc_ids: a service frontend (ClusterIP:port). */
struct strait_svc_key {
	__be32 vip;		/* network order */
	__be16 port;		/* network order */
	__u8 protocol;		/* STRAIT_IPPROTO_TCP */
	__u8 pad;		/* zero */
};
_Static_assert(sizeof(struct strait_svc_key) == 8, "strait_svc_key layout");

/* One backend of a service: the pod, its identity and the target port. */
struct strait_svc_backend {
	__be32 ip4;		/* the backend pod's address, network order */
	__u32 identity;
	__be16 port;		/* target port, network order */
	__u16 pad;		/* zero */
};
_Static_assert(sizeof(struct strait_svc_backend) == 12, "strait_svc_backend layout");

/*
 * Value of strait_svc_ids: the ready backends of a service frontend, which
 * connect4 balances over (socket LB) and judges policy against. The kernel
 * cannot balance count 0 (no ready backend) nor STRAIT_SVC_BACKENDS_MAX + 1
 * (more backends than fit, none listed): the connect then goes to the node
 * proxy, which balances and judges it (or refuses it: no backend).
 */
struct strait_svc_entry {
	__u32 count;		/* 0..=STRAIT_SVC_BACKENDS_MAX */
	struct strait_svc_backend backends[STRAIT_SVC_BACKENDS_MAX];
};
_Static_assert(sizeof(struct strait_svc_entry) == 772, "strait_svc_entry layout");

/*
 * Key of strait_ct: a flow's 5-tuple in the direction its first packet went.
 * ICMP echo uses the identifier as a port: requests {sport = id, dport = 0},
 * replies {sport = 0, dport = id}, so a reply is the reverse of its request.
 */
struct strait_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 protocol;
	__u8 pad[3];		/* zero */
};
_Static_assert(sizeof(struct strait_ct_key) == 16, "strait_ct_key layout");

struct strait_ct_entry {
	__u64 created_ns;	/* bpf_ktime_get_ns() */
	__u64 seen_ns;		/* last packet, either direction (refreshed at most once a second) */
	__u32 policy_rev;	/* strait_config.policy_rev when policy last allowed it */
	__u32 reported;		/* STRAIT_CT_REPORTED_*: the hooks that reported the flow */
};
_Static_assert(sizeof(struct strait_ct_entry) == 24, "strait_ct_entry layout");

/* --- strait_ct_entry.reported (flows other than TCP are reported by tc) */
#define STRAIT_CT_REPORTED_EGRESS	(1U << 0)	/* by tc leaving the source pod */
#define STRAIT_CT_REPORTED_INGRESS	(1U << 1)	/* by tc entering the destination pod */

/* Idle time after which a tracked flow is judged again by policy. */
#define STRAIT_CT_LIFETIME_TCP_S	21600
#define STRAIT_CT_LIFETIME_OTHER_S	60

/* Key of strait_frags: an IPv4 datagram whose first fragment was allowed. */
struct strait_frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;		/* IPv4 identification */
	__u8 protocol;
	__u8 pad;		/* zero */
};
_Static_assert(sizeof(struct strait_frag_key) == 12, "strait_frag_key layout");

/* Value of strait_frags: the ports of the first fragment (for drop events). */
struct strait_frag_entry {
	__be16 sport;
	__be16 dport;
};
_Static_assert(sizeof(struct strait_frag_entry) == 4, "strait_frag_entry layout");

/* --- strait_sock.role */
#define STRAIT_SOCK_CLIENT	1	/* a pod's connect that connect4 sent on the kernel path */
#define STRAIT_SOCK_SERVER	2	/* a pod's accepted connection from another pod (not the proxy) */

/*
 * Value of strait_sock (socket storage): a TCP socket on the kernel fast path.
 * connect4 creates it for clients; sockops fills in the rest when the
 * connection is established (and creates it for servers), and reports the
 * flow when the socket closes. The socket iterator judges it again after a
 * policy or service change and, if it is no longer allowed, sets close_reason
 * and destroys the socket.
 */
struct strait_sock {
	__u64 start_ns;		/* established, bpf_ktime_get_ns(); 0 before */
	__be32 src_ip4;		/* the connecting pod (0 until established, for clients) */
	__be32 dst_ip4;		/* the destination pod: the backend socket LB chose */
	__be32 svc_ip4;		/* the Service frontend dialed; 0 when a pod address was dialed */
	__be16 svc_port;	/* network order */
	__be16 sport;		/* network order; 0 until established, for clients */
	__be16 dport;		/* the destination (target) port, network order */
	__u8 role;		/* STRAIT_SOCK_* */
	__u8 protocol;		/* STRAIT_IPPROTO_TCP */
	__u32 src_identity;	/* as judged when the connection was allowed */
	__u32 dst_identity;
	__u16 close_reason;	/* enum strait_drop_reason; NONE unless Strait ended it */
	__u16 pad;		/* zero */
};
_Static_assert(sizeof(struct strait_sock) == 40, "strait_sock layout");

/*
 * What the socket iterator (iter.bpf.c) writes to its reader for each socket
 * it destroyed.
 */
struct strait_iter_record {
	__u16 reason;		/* enum strait_drop_reason set as close_reason */
	__s16 error;		/* bpf_sock_destroy(): 0, or a negative errno */
};
_Static_assert(sizeof(struct strait_iter_record) == 4, "strait_iter_record layout");

/* --- strait_flow_event.direction, from the point of view of the reporting node */
#define STRAIT_FLOW_EGRESS	1	/* the source pod is on this node */
#define STRAIT_FLOW_INGRESS	2	/* the destination pod is on this node */

/*
 * One record of the strait_flowev ring buffer: a flow the kernel allowed
 * without the proxy. TCP reports once, when the socket closes (sockops), with
 * the socket's byte counters; other protocols report the first packet of a
 * tracked flow (tc). Bytes are from the source's point of view on both sides.
 */
struct strait_flow_event {
	__u64 ktime_ns;		/* close (TCP) or first packet */
	__u64 duration_ns;	/* TCP: established to close; 0 otherwise */
	__u64 bytes_sent;	/* source -> destination */
	__u64 bytes_received;	/* destination -> source */
	__be32 src_ip4;
	__be32 dst_ip4;
	__be32 svc_ip4;		/* the Service frontend dialed, 0 if none */
	__be16 sport;
	__be16 dport;
	__be16 svc_port;
	__u8 protocol;		/* STRAIT_IPPROTO_* */
	__u8 direction;		/* STRAIT_FLOW_* */
	__u32 src_identity;
	__u32 dst_identity;
	__u16 close_reason;	/* enum strait_drop_reason: why Strait ended it; NONE otherwise */
	__u8 hook;		/* enum strait_hook that reported it */
	__u8 pad;		/* zero */
};
_Static_assert(sizeof(struct strait_flow_event) == 64, "strait_flow_event layout");

/* Where a drop happened. */
enum strait_hook {
	STRAIT_HOOK_CONNECT4 = 1,	/* cgroup/connect4: the connect() failed */
	STRAIT_HOOK_TC_FROM_POD = 2,	/* tc ingress of a pod's host-side veth */
	STRAIT_HOOK_TC_TO_POD = 3,	/* tc egress of a pod's host-side veth */
	STRAIT_HOOK_CONNECT6 = 4,	/* cgroup/connect6 (IPv4-mapped destinations) */
	STRAIT_HOOK_SOCKOPS = 5,	/* sockops: a kernel-path TCP connection closed */
	STRAIT_HOOK_SOCK_ITER = 6,	/* the socket iterator re-judging live connections */
	STRAIT_HOOK_SENDMSG4 = 7,	/* cgroup/sendmsg4 (UDP to a Service): the send failed */
};

/* One record of the strait_events ring buffer. */
struct strait_drop_event {
	__u64 ktime_ns;		/* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__be32 src_ip;		/* network order; connect hooks: the pod's address, if known */
	__be32 dst_ip;		/* network order; connect hooks: the address dialed */
	__be16 sport;		/* network order; 0 on connect hooks */
	__be16 dport;		/* network order */
	__u8 protocol;		/* STRAIT_IPPROTO_* */
	__u8 hook;		/* enum strait_hook */
	__u16 reason;		/* enum strait_drop_reason */
	__u32 src_identity;	/* 0 when not known */
	__u32 dst_identity;	/* services: the first backend's */
	__u64 cgroup_id;	/* connect hooks: the caller's cgroup; tc: 0 */
	__u32 ifindex;		/* tc: the host-side veth; connect hooks: 0 */
	__be32 pod_ip4;		/* tc: the address of the pod behind ifindex (strait_pod_ifs);
				 * 0 without an entry, and on connect hooks */
};
_Static_assert(sizeof(struct strait_drop_event) == 48, "strait_drop_event layout");

/*
 * Why Strait dropped or refused something. One list for kernel drops, proxy
 * denials, flow records and metrics: X(name, value, kernel), kernel 1 when the
 * eBPF programs can report the reason (it then has a drop counter). Values of
 * reasons Cilium also has are Cilium's (its DROP_* codes without the sign), so
 * people who know Hubble's output recognise them; Strait's own start at 190.
 * ebpf/build.rs generates the Rust `DropReason` from this list (its names are
 * the flow JSON and metric label values), so a reason is one line here.
 * Values stay below STRAIT_DROP_COUNTERS.
 */
#define STRAIT_DROP_REASONS(X) \
	X(NONE, 0, 0) \
	X(SOURCE_IP_INVALID, 132, 1)	/* A packet leaving a pod whose source address is not the pod's own. */ \
	X(POLICY_DENIED, 133, 1)	/* Policy denied the connection or packet. */ \
	X(INVALID, 134, 1)	/* A packet too short or malformed to judge. */ \
	X(NO_SERVICE_BACKEND, 158, 0)	/* A service without a backend to send the connection to. */ \
	X(FRAG_NOT_FOUND, 175, 1)	/* A later IPv4 fragment whose first fragment was not allowed (or not seen). */ \
	X(NO_PROXY, 190, 1)	/* The node proxy's address is not configured: fail closed. */ \
	X(V4_MAPPED_V6, 191, 1)	/* An IPv4-mapped IPv6 connect that would have bypassed the proxy. */ \
	X(ORIG_DST_UNRECORDED, 192, 1)	/* The original destination could not be recorded, so it was not redirected. */ \
	X(NOT_LOCAL_ENDPOINT, 193, 0)	/* A tunnel stream for an address that is not a pod of this node. */ \
	X(IDENTITY_MISMATCH, 195, 0)	/* A tunnel stream whose source is not a pod of the authenticated peer node. */ \
	X(BACKEND_REMOVED, 196, 1)	/* A load-balanced connection whose Service backend was removed. */ \
	X(PROXY_REQUIRED, 197, 1)	/* A pod-to-pod packet to a port with L7 rules that did not come through the proxy. */ \
	X(HTTP_PATH_INVALID, 200, 0)	/* An HTTP request path the proxy cannot normalise unambiguously: 400. */

enum strait_drop_reason {
#define STRAIT_DROP_ENUM(name, value, kernel) STRAIT_DROP_##name = value,
	STRAIT_DROP_REASONS(STRAIT_DROP_ENUM)
#undef STRAIT_DROP_ENUM
};

#define STRAIT_DROP_CHECK(name, value, kernel) \
	_Static_assert(value < STRAIT_DROP_COUNTERS, "drop reason " #name " has no counter");
STRAIT_DROP_REASONS(STRAIT_DROP_CHECK)
#undef STRAIT_DROP_CHECK

#endif /* STRAIT_ABI_H */
