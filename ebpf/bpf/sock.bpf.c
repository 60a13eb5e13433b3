/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cgroup socket-address hooks, attached to the node cgroup (every pod's
 * cgroup is below it; the agent and its proxy are not).
 *
 *   connect4     TCP connects go to the node proxy; the original destination
 *                is recorded under the socket cookie.
 *   getpeername4 a redirected socket reports the address it dialed.
 *   connect6     IPv4-mapped TCP connects, which would bypass connect4, are
 *                rejected unless connect4 would let them pass.
 *
 * Each program is a thin adapter: read the context, look up the maps, call a
 * decision helper from connect.h, apply it.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "strait_abi.h"
#include "maps.h"
#include "connect.h"

static __always_inline const struct strait_config *strait_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&strait_cfg, &zero);
}

static __always_inline int strait_is_bypassed(__be32 ip4)
{
	return bpf_map_lookup_elem(&strait_bypass, &ip4) != NULL;
}

SEC("cgroup/connect4")
int strait_connect4(struct bpf_sock_addr *ctx)
{
	struct strait_connect_decision d;
	struct strait_orig_dst orig = {};
	__be32 dst_ip;
	__be16 dst_port;
	__u64 cookie;

	if (!strait_is_tcp(ctx->type, ctx->protocol))
		return STRAIT_SOCK_ALLOW;

	dst_ip = ctx->user_ip4;
	dst_port = (__be16)ctx->user_port;
	d = strait_connect4_decide(strait_config_get(), dst_ip, dst_port,
				   strait_is_bypassed(dst_ip));
	if (d.verdict == STRAIT_CONNECT_PASS)
		return STRAIT_SOCK_ALLOW;
	if (d.verdict != STRAIT_CONNECT_REDIRECT)
		return STRAIT_SOCK_REJECT;

	/* Without a record the proxy could not route it: fail closed. */
	orig.ip4 = dst_ip;
	orig.port = dst_port;
	cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&strait_orig_ck, &cookie, &orig, BPF_ANY))
		return STRAIT_SOCK_REJECT;

	ctx->user_ip4 = d.ip4;
	ctx->user_port = (__u32)d.port;
	return STRAIT_SOCK_ALLOW;
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

	if (!strait_is_tcp(ctx->type, ctx->protocol))
		return STRAIT_SOCK_ALLOW;
	/* Real IPv6 is left alone for now. */
	if (!strait_ip6_v4_mapped(ctx->user_ip6[0], ctx->user_ip6[1],
				  ctx->user_ip6[2], ctx->user_ip6[3], &dst_ip))
		return STRAIT_SOCK_ALLOW;

	dst_port = (__be16)ctx->user_port;
	d = strait_connect6_mapped_decide(strait_config_get(), dst_ip, dst_port,
					  strait_is_bypassed(dst_ip));
	return d.verdict == STRAIT_CONNECT_PASS ? STRAIT_SOCK_ALLOW
						: STRAIT_SOCK_REJECT;
}

/* GPL-compatible so that GPL-only helpers stay usable; as Cilium's datapath. */
char _license[] SEC("license") = "Dual BSD/GPL";
