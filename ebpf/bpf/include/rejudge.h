/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Judging a live kernel-path TCP socket again, after a policy or service
 * change, from its strait_sock storage. Used by the socket iterator
 * (iter.bpf.c); plain values and map lookups only.
 *
 * Order, first match wins:
 *   1. identities looked up now in strait_ipcache for src_ip4 and dst_ip4
 *      (a relabelled pod is judged by its new identity), protocol TCP,
 *      dport: the verdict of policy.h.
 *        PROXY -> PROXY_REQUIRED: the port has L7 rules now, and only the
 *                 proxy may carry it (a kernel-path socket never saw them);
 *        DENY / no entry -> POLICY_DENIED.
 *   2. a socket that dialed a Service (svc_ip4 != 0) whose backend
 *      {dst_ip4, dport} is not among the frontend's backends, or whose
 *      frontend is gone -> BACKEND_REMOVED (as Cilium's socket LB ends
 *      connections to removed backends); so is a socket whose frontend has
 *      no ready backend left (count 0). A frontend with more backends than
 *      the kernel balances (count > STRAIT_SVC_BACKENDS_MAX, balanced by the
 *      proxy) is left alone: the map does not list them.
 *   3. otherwise NONE: the socket stays.
 */
#ifndef STRAIT_REJUDGE_H
#define STRAIT_REJUDGE_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "strait_abi.h"
#include "maps.h"
#include "policy.h"

/* Step 2: is {ip4, port} still a backend of the frontend {vip, vport}? */
static __always_inline int strait_backend_kept(__be32 vip, __be16 vport, __be32 ip4, __be16 port)
{
	struct strait_svc_key key = {
		.vip = vip,
		.port = vport,
		.protocol = STRAIT_IPPROTO_TCP,
		.pad = 0,
	};
	const struct strait_svc_entry *svc = bpf_map_lookup_elem(&strait_svc_ids, &key);
	__u32 i;

	if (!svc)
		return 0;
	if (svc->count > STRAIT_SVC_BACKENDS_MAX)
		return 1;
	for (i = 0; i < STRAIT_SVC_BACKENDS_MAX; i++) {
		if (i >= svc->count)
			break;
		if (svc->backends[i].ip4 == ip4 && svc->backends[i].port == port)
			return 1;
	}
	return 0;
}

/* The verdict described at the top of this file: a drop reason, NONE to keep. */
static __always_inline __u16 strait_rejudge(__be32 src_ip4, __be32 dst_ip4, __be16 dport,
					    __be32 svc_ip4, __be16 svc_port)
{
	__u32 src_id = strait_ipcache_identity(src_ip4);
	__u32 dst_id = strait_ipcache_identity(dst_ip4);
	enum strait_policy_match m;

	m = strait_policy_check(src_id, dst_id, STRAIT_IPPROTO_TCP, dport);
	if (m == STRAIT_MATCH_PROXY)
		return STRAIT_DROP_PROXY_REQUIRED;
	if (!strait_match_allows(m))
		return STRAIT_DROP_POLICY_DENIED;
	if (strait_needs_proxy(dst_id, dport))
		return STRAIT_DROP_PROXY_REQUIRED;
	if (svc_ip4 && !strait_backend_kept(svc_ip4, svc_port, dst_ip4, dport))
		return STRAIT_DROP_BACKEND_REMOVED;
	return STRAIT_DROP_NONE;
}

#endif /* STRAIT_REJUDGE_H */
