/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cgroup socket-address hooks, attached to the node cgroup (every pod's
 * cgroup is below it; the agent and its proxy are not).
 *
 *   connect4     A pod's TCP connect is judged by L3/L4 policy and, for a
 *                Service frontend, balanced over its backends (policy.h,
 *                strait_connect4_route): denied, it fails with EPERM and no
 *                packet leaves the pod. Allowed at L4 to a pod, it goes
 *                straight there (the kernel fast path: the socket is
 *                rewritten to the backend and tagged in strait_sock, and
 *                sockops reports its flow). Everything else - ports with L7
 *                rules, services the kernel cannot balance, destinations
 *                that are not pods, unknown cgroups - goes to the node proxy,
 *                with the original destination recorded under the socket
 *                cookie.
 *   getpeername4 a redirected or balanced socket reports the address it
 *                dialed (the Service VIP, as Cilium's socket LB does).
 *   connect4 / sendmsg4 (UDP)  a datagram socket connecting or sending to a
 *                Service frontend is balanced over its backends the same way
 *                (refused with EPERM when policy denies every backend); the
 *                backend is recorded per socket in strait_udp_rnat.
 *   recvmsg4     a datagram from such a backend reports the frontend as its
 *                source, so replies look as if the VIP answered.
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

static __always_inline void strait_connect_refused(__u8 hook, __u8 protocol, __u32 reason,
						   __be32 dst_ip, __be16 dst_port, __u64 cgroup_id,
						   const struct strait_endpoint *ep,
						   __u32 dst_id)
{
	struct strait_drop_event ev = {
		.dst_ip = dst_ip,
		.dport = dst_port,
		.protocol = protocol,
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

static __always_inline int strait_fast_path_on(const struct strait_config *cfg)
{
	return cfg && !(cfg->flags & STRAIT_CFG_NO_FAST_PATH);
}

/* Tags a socket sent on the kernel fast path; 0 on success. */
static __always_inline int strait_tag_fast_path(struct bpf_sock_addr *ctx, __u32 src_id,
						__be32 dst_ip, __be16 dst_port,
						const struct strait_route *route)
{
	struct strait_sock *s;
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return -1;
	s = bpf_sk_storage_get(&strait_sock, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s)
		return -1;
	s->start_ns = 0;
	s->src_ip4 = 0;
	s->sport = 0;
	s->dst_ip4 = route->ip4;
	s->dport = route->port;
	s->svc_ip4 = route->is_service ? dst_ip : 0;
	s->svc_port = route->is_service ? dst_port : 0;
	s->role = STRAIT_SOCK_CLIENT;
	s->protocol = STRAIT_IPPROTO_TCP;
	s->src_identity = src_id;
	s->dst_identity = route->dst_identity;
	s->close_reason = STRAIT_DROP_NONE;
	s->pad = 0;
	return 0;
}

static __always_inline int strait_is_bypassed(__be32 ip4)
{
	return bpf_map_lookup_elem(&strait_bypass, &ip4) != NULL;
}

/* Reports a refused connect to dst_ip:dst_port (network order). */

/*
 * UDP socket LB for connect4 and sendmsg4: a datagram socket dialing a
 * Service frontend goes to a backend. Returns STRAIT_SOCK_REJECT when policy
 * denies every backend of the pod's Service.
 */
static __always_inline int strait_udp_balance(struct bpf_sock_addr *ctx, __u8 hook)
{
	const struct strait_config *cfg = strait_config_get();
	const struct strait_endpoint *ep;
	struct strait_udp_rnat_key key = {};
	struct strait_orig_dst vip = {};
	struct strait_route route = {};
	enum strait_policy_match m;
	struct strait_svc_key svc_key = {
		.vip = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
		.protocol = STRAIT_IPPROTO_UDP,
	};
	__u64 cgroup_id;
	__u32 src_id;

	if (!cfg || (cfg->flags & STRAIT_CFG_DISABLED))
		return STRAIT_SOCK_ALLOW;
	/* The common case, a datagram to anything but a Service: one lookup. */
	if (!bpf_map_lookup_elem(&strait_svc_ids, &svc_key))
		return STRAIT_SOCK_ALLOW;
	cgroup_id = bpf_get_current_cgroup_id();
	ep = bpf_map_lookup_elem(&strait_endpoint, &cgroup_id);
	/* Not a known pod: balanced all the same, tc judges what leaves. */
	src_id = ep ? ep->identity : STRAIT_ID_HOST;
	m = strait_connect4_route(src_id, svc_key.vip, svc_key.port, STRAIT_IPPROTO_UDP,
				  bpf_get_prandom_u32(), &route);
	if (!route.is_service)
		return STRAIT_SOCK_ALLOW;	/* no ready backend: nothing to balance */
	if (!strait_match_allows(m)) {
		strait_connect_refused(hook, STRAIT_IPPROTO_UDP, STRAIT_DROP_POLICY_DENIED, svc_key.vip, svc_key.port,
				       cgroup_id, ep, route.dst_identity);
		return STRAIT_SOCK_REJECT;
	}
	key.cookie = bpf_get_socket_cookie(ctx);
	key.ip4 = route.ip4;
	key.port = route.port;
	vip.ip4 = svc_key.vip;
	vip.port = svc_key.port;
	bpf_map_update_elem(&strait_udp_rnat, &key, &vip, BPF_ANY);
	ctx->user_ip4 = route.ip4;
	ctx->user_port = (__u32)route.port;
	return STRAIT_SOCK_ALLOW;
}

/* recvmsg4 / getpeername4 of a balanced UDP socket: the backend reads as the frontend. */
static __always_inline void strait_udp_reverse(struct bpf_sock_addr *ctx)
{
	struct strait_udp_rnat_key key = {
		.cookie = bpf_get_socket_cookie(ctx),
		.ip4 = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	const struct strait_orig_dst *vip = bpf_map_lookup_elem(&strait_udp_rnat, &key);

	if (vip) {
		ctx->user_ip4 = vip->ip4;
		ctx->user_port = (__u32)vip->port;
	}
}

SEC("cgroup/sendmsg4")
int strait_sendmsg4(struct bpf_sock_addr *ctx)
{
	if (!strait_is_udp(ctx->type, ctx->protocol))
		return STRAIT_SOCK_ALLOW;
	return strait_udp_balance(ctx, STRAIT_HOOK_SENDMSG4);
}

SEC("cgroup/recvmsg4")
int strait_recvmsg4(struct bpf_sock_addr *ctx)
{
	if (strait_is_udp(ctx->type, ctx->protocol))
		strait_udp_reverse(ctx);
	return STRAIT_SOCK_ALLOW;
}

SEC("cgroup/connect4")
int strait_connect4(struct bpf_sock_addr *ctx)
{
	const struct strait_config *cfg = strait_config_get();
	const struct strait_endpoint *ep = NULL;
	struct strait_connect_decision d;
	struct strait_orig_dst orig = {};
	struct strait_route route = {};
	enum strait_policy_match m;
	__u32 dst_id = 0;
	__be32 dst_ip;
	__be16 dst_port;
	__u64 cookie;
	__u64 cgroup_id;

	if (strait_is_udp(ctx->type, ctx->protocol))
		return strait_udp_balance(ctx, STRAIT_HOOK_CONNECT4);
	if (!strait_is_tcp(ctx->type, ctx->protocol))
		return STRAIT_SOCK_ALLOW;

	dst_ip = ctx->user_ip4;
	dst_port = (__be16)ctx->user_port;
	d = strait_connect4_decide(cfg, dst_ip, dst_port, strait_is_bypassed(dst_ip));
	if (d.verdict == STRAIT_CONNECT_PASS)
		return STRAIT_SOCK_ALLOW;

	cgroup_id = bpf_get_current_cgroup_id();
	ep = bpf_map_lookup_elem(&strait_endpoint, &cgroup_id);
	if (d.verdict == STRAIT_CONNECT_REDIRECT && ep) {
		if (strait_fast_path_on(cfg)) {
			m = strait_connect4_route(ep->identity, dst_ip, dst_port,
						  STRAIT_IPPROTO_TCP, bpf_get_prandom_u32(), &route);
			dst_id = route.dst_identity;
		} else {
			m = strait_connect4_policy(ep->identity, dst_ip, dst_port, &dst_id);
		}
		if (!strait_match_allows(m)) {
			d.verdict = STRAIT_CONNECT_REJECT;
			d.reason = STRAIT_DROP_POLICY_DENIED;
		} else if (strait_fast_path_on(cfg) && strait_route_is_direct(m, &route) &&
			   !strait_tag_fast_path(ctx, ep->identity, dst_ip, dst_port, &route)) {
			/* The kernel fast path: straight to the pod, no proxy. */
			ctx->user_ip4 = route.ip4;
			ctx->user_port = (__u32)route.port;
			return STRAIT_SOCK_ALLOW;
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
	strait_connect_refused(STRAIT_HOOK_CONNECT4, STRAIT_IPPROTO_TCP, d.reason, dst_ip, dst_port, cgroup_id,
			       ep, dst_id);
	return STRAIT_SOCK_REJECT;
}

SEC("cgroup/getpeername4")
int strait_getpeername4(struct bpf_sock_addr *ctx)
{
	const struct strait_orig_dst *orig;
	const struct strait_sock *s;
	__u64 cookie;

	if (strait_is_udp(ctx->type, ctx->protocol)) {
		strait_udp_reverse(ctx);
		return STRAIT_SOCK_ALLOW;
	}
	if (!strait_is_tcp(ctx->type, ctx->protocol))
		return STRAIT_SOCK_ALLOW;

	if (ctx->sk) {
		s = bpf_sk_storage_get(&strait_sock, ctx->sk, NULL, 0);
		if (s && s->role == STRAIT_SOCK_CLIENT && s->svc_ip4) {
			ctx->user_ip4 = s->svc_ip4;
			ctx->user_port = (__u32)s->svc_port;
			return STRAIT_SOCK_ALLOW;
		}
	}
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
	strait_connect_refused(STRAIT_HOOK_CONNECT6, STRAIT_IPPROTO_TCP, d.reason, dst_ip, dst_port, cgroup_id,
			       bpf_map_lookup_elem(&strait_endpoint, &cgroup_id), 0);
	return STRAIT_SOCK_REJECT;
}

/* GPL-compatible so that GPL-only helpers stay usable; as Cilium's datapath. */
char _license[] SEC("license") = "Dual BSD/GPL";
