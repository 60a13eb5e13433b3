/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Decisions of the cgroup socket hooks, on plain values.
 *
 * The SEC() programs in sock.bpf.c and sockops.bpf.c read their context,
 * look up the maps, call one of these helpers and apply the result; nothing
 * here touches a context or a map, so test wrappers can call the helpers
 * directly.
 */
#ifndef STRAIT_CONNECT_H
#define STRAIT_CONNECT_H

#include <linux/types.h>
#include <bpf/bpf_endian.h>

#include "strait_abi.h"

/* Not in the uapi headers this is built against without libc. */
#define STRAIT_AF_INET		2
#define STRAIT_AF_INET6		10
#define STRAIT_SOCK_STREAM	1
#define STRAIT_SOCK_DGRAM	2

/* Return values of cgroup sock_addr programs. */
#define STRAIT_SOCK_REJECT	0	/* the syscall fails with EPERM */
#define STRAIT_SOCK_ALLOW	1

enum strait_connect_verdict {
	STRAIT_CONNECT_PASS = 0,	/* leave the connect alone */
	STRAIT_CONNECT_REDIRECT = 1,	/* record the destination, rewrite to the proxy */
	STRAIT_CONNECT_REJECT = 2,	/* fail the connect (EPERM) */
};

struct strait_connect_decision {
	enum strait_connect_verdict verdict;
	enum strait_drop_reason reason;	/* why, when REJECT */
	__be32 ip4;			/* where to, when REDIRECT (network order) */
	__be16 port;			/* network order */
};

static __always_inline int strait_is_tcp(__u32 type, __u32 protocol)
{
	return type == STRAIT_SOCK_STREAM && protocol == STRAIT_IPPROTO_TCP;
}

static __always_inline int strait_is_udp(__u32 type, __u32 protocol)
{
	return type == STRAIT_SOCK_DGRAM && protocol == STRAIT_IPPROTO_UDP;
}

/* 127.0.0.0/8 and 0.0.0.0 (which connect() treats as this host). */
static __always_inline int strait_ip4_is_local(__be32 ip)
{
	__u32 host = bpf_ntohl(ip);

	return (host >> 24) == 127 || host == 0;
}

/*
 * Decision for an IPv4 TCP connect to dst_ip:dst_port (network order).
 * cfg may be NULL (no config entry): that fails closed. `bypassed` says
 * whether dst_ip is in strait_bypass.
 *
 * Precedence, first match wins:
 *   1. loopback / unspecified destination  -> PASS (never leaves the pod)
 *   2. no config entry                     -> REJECT (NO_PROXY)
 *   3. STRAIT_CFG_DISABLED                 -> PASS (switched off on purpose)
 *   4. proxy address not configured (0)    -> REJECT (NO_PROXY): fail closed
 *   5. destination is the proxy itself     -> PASS (also keeps a second,
 *      overlapping attachment of this program during an agent restart from
 *      overwriting the original destination with the proxy's address)
 *   6. destination in the bypass set       -> PASS
 *   7. otherwise                           -> REDIRECT to the proxy
 */
static __always_inline struct strait_connect_decision
strait_connect4_decide(const struct strait_config *cfg, __be32 dst_ip,
		       __be16 dst_port, int bypassed)
{
	struct strait_connect_decision d = {
		.verdict = STRAIT_CONNECT_PASS,
		.reason = STRAIT_DROP_NONE,
	};

	if (strait_ip4_is_local(dst_ip))
		return d;
	if (!cfg) {
		d.verdict = STRAIT_CONNECT_REJECT;
		d.reason = STRAIT_DROP_NO_PROXY;
		return d;
	}
	if (cfg->flags & STRAIT_CFG_DISABLED)
		return d;
	if (cfg->proxy_ip4 == 0 || cfg->proxy_port == 0) {
		d.verdict = STRAIT_CONNECT_REJECT;
		d.reason = STRAIT_DROP_NO_PROXY;
		return d;
	}
	if (dst_ip == cfg->proxy_ip4 && dst_port == cfg->proxy_port)
		return d;
	if (bypassed)
		return d;
	d.verdict = STRAIT_CONNECT_REDIRECT;
	d.ip4 = cfg->proxy_ip4;
	d.port = cfg->proxy_port;
	return d;
}

/*
 * If ip6 (network order words) is IPv4-mapped (::ffff:a.b.c.d), stores the
 * IPv4 address in *ip4 and returns 1.
 */
static __always_inline int strait_ip6_v4_mapped(__u32 w0, __u32 w1, __u32 w2,
						__u32 w3, __be32 *ip4)
{
	if (w0 != 0 || w1 != 0 || w2 != bpf_htonl(0x0000ffff))
		return 0;
	*ip4 = w3;
	return 1;
}

/*
 * Decision for a TCP connect on an IPv6 socket to an IPv4-mapped address.
 * Such a connect reaches an IPv4 destination without passing connect4, so
 * whatever connect4 would redirect is rejected instead (V4_MAPPED_V6).
 */
static __always_inline struct strait_connect_decision
strait_connect6_mapped_decide(const struct strait_config *cfg, __be32 dst_ip,
			      __be16 dst_port, int bypassed)
{
	struct strait_connect_decision d =
		strait_connect4_decide(cfg, dst_ip, dst_port, bypassed);

	if (d.verdict == STRAIT_CONNECT_REDIRECT) {
		d.verdict = STRAIT_CONNECT_REJECT;
		d.reason = STRAIT_DROP_V4_MAPPED_V6;
		d.ip4 = 0;
		d.port = 0;
	}
	return d;
}

/*
 * Key of strait_orig_tp for a client socket. bpf_sock_ops gives local_ip4 in
 * network order but local_port in host order.
 */
static __always_inline struct strait_sock_key
strait_client_key(__u32 local_ip4_net, __u32 local_port_host)
{
	struct strait_sock_key key = {
		.ip4 = local_ip4_net,
		.port = bpf_htons((__u16)local_port_host),
		.pad = 0,
	};

	return key;
}

#endif /* STRAIT_CONNECT_H */
