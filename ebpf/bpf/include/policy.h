/* SPDX-License-Identifier: Apache-2.0 */
/*
 * L3/L4 policy verdicts: identities from strait_ipcache / strait_endpoint,
 * enforcement from strait_policed, rules from strait_policy. User space
 * compiles policies into these maps; the helpers here only look up.
 *
 * Verdict for (src identity, dst identity, protocol, dport), first match wins:
 *   1. either side is STRAIT_ID_HOST             -> ALLOW (HOST)
 *      Pod <-> node gateway: the proxy, which already enforced policy for
 *      what it forwards (connections from the proxy come from the gateway
 *      address), and DNS.
 *   2. neither policed[src] has EGRESS nor policed[dst] has INGRESS
 *                                                -> ALLOW (UNPOLICED)
 *   3. strait_policy lookup (longest prefix, see strait_policy_key):
 *        ALLOW -> ALLOW, PROXY -> ALLOW (the proxy applies L7 rules),
 *        DENY -> DENY, no entry -> DENY (NONE).
 * One lookup covers both directions: user space writes an allow for
 * (src, dst) only when src's egress and dst's ingress both allow it.
 */
#ifndef STRAIT_POLICY_H
#define STRAIT_POLICY_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "strait_abi.h"
#include "maps.h"

/* How a verdict was reached. */
enum strait_policy_match {
	STRAIT_MATCH_HOST = 1,		/* allowed: one side is the host */
	STRAIT_MATCH_UNPOLICED = 2,	/* allowed: nothing enforced */
	STRAIT_MATCH_ALLOW = 3,		/* allowed by an ALLOW entry */
	STRAIT_MATCH_PROXY = 4,		/* allowed by a PROXY entry */
	STRAIT_MATCH_DEFERRED = 5,	/* allowed: a service the kernel cannot judge */
	STRAIT_MATCH_DENY = 6,		/* denied by a DENY entry */
	STRAIT_MATCH_NONE = 7,		/* denied: enforced, and no entry matches */
};

static __always_inline int strait_match_allows(enum strait_policy_match m)
{
	return m != STRAIT_MATCH_DENY && m != STRAIT_MATCH_NONE;
}

/* Step 2, on plain values: does either side enforce this direction? */
static __always_inline int strait_policy_enforced(__u32 src_flags, __u32 dst_flags)
{
	return (src_flags & STRAIT_POLICED_EGRESS) || (dst_flags & STRAIT_POLICED_INGRESS);
}

/* Step 3, on plain values: what a strait_policy entry (or none) means. */
static __always_inline enum strait_policy_match
strait_policy_action_match(const __u32 *action)
{
	if (!action)
		return STRAIT_MATCH_NONE;
	switch (*action) {
	case STRAIT_POLICY_ALLOW:
		return STRAIT_MATCH_ALLOW;
	case STRAIT_POLICY_PROXY:
		return STRAIT_MATCH_PROXY;
	default:
		/* DENY, and anything this build does not know: fail closed. */
		return STRAIT_MATCH_DENY;
	}
}

/* Identity of an IPv4 address: longest prefix in strait_ipcache, else WORLD. */
static __always_inline __u32 strait_ipcache_identity(__be32 ip4)
{
	struct strait_ipcache_key key = { .prefixlen = 32, .ip4 = ip4 };
	const __u32 *id = bpf_map_lookup_elem(&strait_ipcache, &key);

	return id ? *id : STRAIT_ID_WORLD;
}

static __always_inline __u32 strait_policed_flags(__u32 identity)
{
	const __u32 *flags = bpf_map_lookup_elem(&strait_policed, &identity);

	return flags ? *flags : 0;
}

/* The verdict described at the top of this file. */
static __always_inline enum strait_policy_match
strait_policy_check(__u32 src_id, __u32 dst_id, __u8 protocol, __be16 dport)
{
	struct strait_policy_key key = {
		.prefixlen = STRAIT_POLICY_PREFIX_FULL,
		.src_identity = src_id,
		.dst_identity = dst_id,
		.reserved = 0,
		.protocol = protocol,
		.dport = dport,
	};

	if (src_id == STRAIT_ID_HOST || dst_id == STRAIT_ID_HOST)
		return STRAIT_MATCH_HOST;
	if (!strait_policy_enforced(strait_policed_flags(src_id),
				    strait_policed_flags(dst_id)))
		return STRAIT_MATCH_UNPOLICED;
	return strait_policy_action_match(bpf_map_lookup_elem(&strait_policy, &key));
}

/*
 * Verdict for a pod (identity src_id) connecting over TCP to dst_ip:dst_port
 * (network order). *dst_id receives the identity judged (for drop events).
 *
 * A service frontend in strait_svc_ids is judged against its backends: the
 * connect is denied only when policy denies every (identity, target port)
 * of them. The proxy still judges the backend it picks; this check is what
 * makes a connect to a wholly denied service fail at connect(). With
 * count 0 (the kernel cannot tell) it is DEFERRED to the proxy. Any other
 * destination is judged by its strait_ipcache identity and the port dialed.
 */
static __always_inline enum strait_policy_match
strait_connect4_policy(__u32 src_id, __be32 dst_ip, __be16 dst_port, __u32 *dst_id)
{
	struct strait_svc_key svc_key = {
		.vip = dst_ip,
		.port = dst_port,
		.protocol = STRAIT_IPPROTO_TCP,
		.pad = 0,
	};
	const struct strait_svc_entry *svc;
	enum strait_policy_match first = STRAIT_MATCH_NONE;
	enum strait_policy_match m;
	__u32 i;

	svc = bpf_map_lookup_elem(&strait_svc_ids, &svc_key);
	if (!svc) {
		*dst_id = strait_ipcache_identity(dst_ip);
		return strait_policy_check(src_id, *dst_id, STRAIT_IPPROTO_TCP, dst_port);
	}
	*dst_id = 0;
	if (svc->count == 0 || svc->count > STRAIT_SVC_BACKENDS_MAX)
		return STRAIT_MATCH_DEFERRED;
	for (i = 0; i < STRAIT_SVC_BACKENDS_MAX; i++) {
		if (i >= svc->count)
			break;
		m = strait_policy_check(src_id, svc->backends[i].identity,
					STRAIT_IPPROTO_TCP, svc->backends[i].port);
		if (strait_match_allows(m)) {
			*dst_id = svc->backends[i].identity;
			return m;
		}
		if (i == 0) {
			first = m;
			*dst_id = svc->backends[0].identity;
		}
	}
	return first;
}

/* Whether an identity is a workload's (a pod of any cluster). */
static __always_inline int strait_is_workload(__u32 identity)
{
	return identity >= STRAIT_ID_FIRST_WORKLOAD && identity < STRAIT_ID_CIDR_BASE;
}

/* Where connect4 sends a connection allowed on the kernel fast path. */
struct strait_route {
	__be32 ip4;		/* the pod: the dialed address, or the backend chosen */
	__be16 port;		/* network order */
	__u16 pad;
	__u32 dst_identity;	/* the identity judged */
	__u32 is_service;	/* 1: a Service frontend was dialed and ip4/port is its backend */
};

/*
 * Route and verdict of a pod (identity src_id) connecting over protocol
 * (TCP or UDP) to dst_ip:dst_port (network order), with the kernel fast path
 * on: Cilium's socket LB and L4 policy in one step.
 *
 * A Service frontend with backends in strait_svc_ids is balanced here: from a
 * random backend (seed), the first one policy allows is chosen, so a
 * connection fails only when policy denies every backend (its verdict is then
 * the first backend's). Any other destination is judged by its strait_ipcache
 * identity and the port dialed. The caller sends ALLOW / UNPOLICED results
 * whose destination is a workload straight to route->ip4:port; everything else
 * that is allowed (PROXY: L7 rules; DEFERRED: a service the kernel cannot
 * balance; HOST, world, CIDRs) goes to the proxy.
 */
static __always_inline enum strait_policy_match
strait_connect4_route(__u32 src_id, __be32 dst_ip, __be16 dst_port, __u8 protocol, __u32 seed,
		      struct strait_route *route)
{
	struct strait_svc_key svc_key = {
		.vip = dst_ip,
		.port = dst_port,
		.protocol = protocol,
		.pad = 0,
	};
	const struct strait_svc_entry *svc;
	const struct strait_svc_backend *b;
	enum strait_policy_match first = STRAIT_MATCH_NONE;
	enum strait_policy_match m;
	__u32 count, start, i, idx;

	route->ip4 = dst_ip;
	route->port = dst_port;
	route->pad = 0;
	route->is_service = 0;
	svc = bpf_map_lookup_elem(&strait_svc_ids, &svc_key);
	if (!svc) {
		route->dst_identity = strait_ipcache_identity(dst_ip);
		return strait_policy_check(src_id, route->dst_identity, protocol, dst_port);
	}
	route->dst_identity = 0;
	count = svc->count;
	if (count == 0 || count > STRAIT_SVC_BACKENDS_MAX)
		return STRAIT_MATCH_DEFERRED;
	route->is_service = 1;
	start = seed % count;
	for (i = 0; i < STRAIT_SVC_BACKENDS_MAX; i++) {
		if (i >= count)
			break;
		idx = start + i;
		if (idx >= count)
			idx -= count;
		if (idx >= STRAIT_SVC_BACKENDS_MAX)
			break;
		b = &svc->backends[idx];
		m = strait_policy_check(src_id, b->identity, protocol, b->port);
		if (i == 0 || strait_match_allows(m)) {
			route->ip4 = b->ip4;
			route->port = b->port;
			route->dst_identity = b->identity;
		}
		if (strait_match_allows(m))
			return m;
		if (i == 0)
			first = m;
	}
	return first;
}

/*
 * Whether a TCP connection to identity:port (network order) must go through
 * the proxy because another cluster judges L7 rules there (strait_viaproxy).
 */
static __always_inline int strait_needs_proxy(__u32 identity, __be16 port)
{
	struct strait_via_proxy_key key = {
		.identity = identity,
		.port = port,
		.protocol = STRAIT_IPPROTO_TCP,
		.pad = 0,
	};

	if (bpf_map_lookup_elem(&strait_viaproxy, &key))
		return 1;
	key.port = 0;
	return bpf_map_lookup_elem(&strait_viaproxy, &key) != 0;
}

/* Whether a TCP verdict of strait_connect4_route goes straight to the pod. */
static __always_inline int strait_route_is_direct(enum strait_policy_match m,
						  const struct strait_route *route)
{
	return (m == STRAIT_MATCH_ALLOW || m == STRAIT_MATCH_UNPOLICED) &&
	       strait_is_workload(route->dst_identity) &&
	       !strait_needs_proxy(route->dst_identity, route->port);
}

#endif /* STRAIT_POLICY_H */
