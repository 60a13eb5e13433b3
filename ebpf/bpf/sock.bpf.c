/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cgroup socket-address hooks, attached to the node cgroup (every pod's
 * cgroup is below it; the agent and its proxy are not).
 *
 *   connect4     TCP connects go to the node proxy; the original destination
 *                is recorded under the socket cookie. Before that, a pod's
 *                connect is judged by L3/L4 policy (policy.h): denied, it
 *                fails with EPERM and no packet leaves the pod.
 *   getpeername4 a redirected socket reports the address it dialed.
 *   connect6     IPv4-mapped TCP connects, which would bypass connect4, are
 *                rejected unless connect4 would let them pass.
 *
 * Each program is a thin adapter: read the context, look up the maps, call a
 * decision helper from connect.h / policy.h, apply it. Every refused connect
 * is counted and reported (drop.h).
 *
 * Policy at connect4 applies to connects that would be redirected, from a
 * cgroup in strait_endpoint. A cgroup it does not know (a process of the
 * node outside any pod, or a pod not yet in the map, or one nested below its
 * pod's directory) is redirected without a kernel check: the proxy still
 * enforces policy for it. Connects that pass unchanged (loopback, bypass
 * set, redirection switched off) are judged by tc when they leave the pod.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "strait_abi.h"
#include "maps.h"
#include "connect.h"
#include "policy.h"
#include "drop.h"

static __always_inline const struct strait_config *strait_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&strait_cfg, &zero);
}

static __always_inline int strait_is_bypassed(__be32 ip4)
{
	return bpf_map_lookup_elem(&strait_bypass, &ip4) != NULL;
}

/* Reports a refused connect to dst_ip:dst_port (network order). */
static __always_inline void strait_connect_refused(__u8 hook, __u32 reason, __be32 dst_ip,
						   __be16 dst_port, __u64 cgroup_id,
						   const struct strait_endpoint *ep,
						   __u32 dst_id)
{
	struct strait_drop_event ev = {
		.dst_ip = dst_ip,
		.dport = dst_port,
		.protocol = STRAIT_IPPROTO_TCP,
		.hook = hook,
		.reason = reason,
		.dst_identity = dst_id,
		.cgroup_id = cgroup_id,
	};

	if (ep) {
		ev.src_ip = ep->ip4;
		ev.src_identity = ep->identity;
	}
	strait_drop_notify(&ev);
}

SEC("cgroup/connect4")
int strait_connect4(struct bpf_sock_addr *ctx)
{
	const struct strait_endpoint *ep = NULL;
	struct strait_connect_decision d;
	struct strait_orig_dst orig = {};
	enum strait_policy_match m;
	__u32 dst_id = 0;
	__be32 dst_ip;
	__be16 dst_port;
	__u64 cookie;
	__u64 cgroup_id;

	if (!strait_is_tcp(ctx->type, ctx->protocol))
		return STRAIT_SOCK_ALLOW;

	dst_ip = ctx->user_ip4;
	dst_port = (__be16)ctx->user_port;
	d = strait_connect4_decide(strait_config_get(), dst_ip, dst_port,
				   strait_is_bypassed(dst_ip));
	if (d.verdict == STRAIT_CONNECT_PASS)
		return STRAIT_SOCK_ALLOW;

	cgroup_id = bpf_get_current_cgroup_id();
	ep = bpf_map_lookup_elem(&strait_endpoint, &cgroup_id);
	if (d.verdict == STRAIT_CONNECT_REDIRECT && ep) {
		m = strait_connect4_policy(ep->identity, dst_ip, dst_port, &dst_id);
		if (!strait_match_allows(m)) {
			d.verdict = STRAIT_CONNECT_REJECT;
			d.reason = STRAIT_DROP_POLICY_DENIED;
		}
	}
	if (d.verdict != STRAIT_CONNECT_REDIRECT)
		goto refuse;

	/* Without a record the proxy could not route it: fail closed. */
	orig.ip4 = dst_ip;
	orig.port = dst_port;
	cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&strait_orig_ck, &cookie, &orig, BPF_ANY)) {
		d.reason = STRAIT_DROP_ORIG_DST_UNRECORDED;
		goto refuse;
	}

	ctx->user_ip4 = d.ip4;
	ctx->user_port = (__u32)d.port;
	return STRAIT_SOCK_ALLOW;

refuse:
	strait_connect_refused(STRAIT_HOOK_CONNECT4, d.reason, dst_ip, dst_port, cgroup_id,
			       ep, dst_id);
	return STRAIT_SOCK_REJECT;
}

SEC("cgroup/getpeername4")
int strait_getpeername4(struct bpf_sock_addr *ctx)
{
	const struct strait_orig_dst *orig;
	__u64 cookie;

	if (!strait_is_tcp(ctx->type, ctx->protocol))
		return STRAIT_SOCK_ALLOW;

	cookie = bpf_get_socket_cookie(ctx);
	orig = bpf_map_lookup_elem(&strait_orig_ck, &cookie);
	if (orig) {
		ctx->user_ip4 = orig->ip4;
		ctx->user_port = (__u32)orig->port;
	}
	return STRAIT_SOCK_ALLOW;
}

SEC("cgroup/connect6")
int strait_connect6(struct bpf_sock_addr *ctx)
{
	struct strait_connect_decision d;
	__be32 dst_ip;
	__be16 dst_port;
	__u64 cgroup_id;

	if (!strait_is_tcp(ctx->type, ctx->protocol))
		return STRAIT_SOCK_ALLOW;
	/* Real IPv6 is left alone for now. */
	if (!strait_ip6_v4_mapped(ctx->user_ip6[0], ctx->user_ip6[1],
				  ctx->user_ip6[2], ctx->user_ip6[3], &dst_ip))
		return STRAIT_SOCK_ALLOW;

	dst_port = (__be16)ctx->user_port;
	d = strait_connect6_mapped_decide(strait_config_get(), dst_ip, dst_port,
					  strait_is_bypassed(dst_ip));
	if (d.verdict == STRAIT_CONNECT_PASS)
		return STRAIT_SOCK_ALLOW;
	cgroup_id = bpf_get_current_cgroup_id();
	strait_connect_refused(STRAIT_HOOK_CONNECT6, d.reason, dst_ip, dst_port, cgroup_id,
			       bpf_map_lookup_elem(&strait_endpoint, &cgroup_id), 0);
	return STRAIT_SOCK_REJECT;
}

/* GPL-compatible so that GPL-only helpers stay usable; as Cilium's datapath. */
char _license[] SEC("license") = "Dual BSD/GPL";
