/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The decisions of the tc programs for one parsed IPv4 packet.
 *
 * Leaving a pod, the source address is verified first (strait_tc_check_source):
 * nothing below ever sees an address the pod forged. Then, for both hooks,
 * precedence, first match wins:
 *   1. later fragment        -> follows its first fragment: ALLOW if that was
 *                               allowed (strait_frags), else FRAG_NOT_FOUND
 *   2. either side is HOST   -> ALLOW, untracked (pod <-> gateway: the proxy,
 *                               which enforced policy already, and DNS)
 *   3. ICMP error quoting a tracked flow (either direction) -> ALLOW
 *   4. tracked flow, this direction or the reverse (strait_ct) -> ALLOW;
 *      judged again first if policy changed since it was last allowed
 *      (strait_config.policy_rev): no longer allowed, its entry is removed
 *      and the packet dropped as in 5.
 *   5. policy (policy.h)     -> ALLOW, and the flow is tracked from now on;
 *                               PROXY -> PROXY_REQUIRED (a port with L7 rules
 *                               is reached through the proxy, whose packets
 *                               come from the gateway, never pod to pod);
 *                               or POLICY_DENIED
 * An allowed first fragment is recorded so that the later ones follow.
 *
 * Flows other than TCP are reported here (TCP is reported per socket by
 * sockops): the first packet of a tracked flow in its own direction is
 * reported once by the hook leaving the source pod (EGRESS) and once by the
 * hook entering the destination pod (INGRESS).
 */
#ifndef STRAIT_TC_H
#define STRAIT_TC_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "strait_abi.h"
#include "maps.h"
#include "parse.h"
#include "conntrack.h"
#include "policy.h"

static __always_inline struct strait_frag_key strait_frag_key_of(const struct strait_pkt *pkt)
{
	struct strait_frag_key k = {
		.saddr = pkt->tuple.saddr,
		.daddr = pkt->tuple.daddr,
		.id = pkt->ip_id,
		.protocol = pkt->tuple.protocol,
	};

	return k;
}

/*
 * Source-address verification of a packet leaving a pod (Cilium's
 * DROP_INVALID_SIP): a pod is root in its network namespace and can write any
 * source with a raw socket, so its IPv4 source must be the address of the pod
 * behind the interface (strait_pod_ifs), or the packet would be judged, and
 * received, as another pod's. An interface without an entry belongs to no
 * known pod: nothing it sends is trusted (fail closed).
 *
 * Sets *pod_id and *pod_ip4 to the interface's pod (0 without an entry): the
 * identity to judge the packet by, and whom to report a drop against.
 */
static __always_inline enum strait_drop_reason
strait_tc_check_source(__u32 ifindex, __be32 saddr, __u32 *pod_id, __be32 *pod_ip4)
{
	const struct strait_pod_if *pod = bpf_map_lookup_elem(&strait_pod_ifs, &ifindex);

	if (!pod) {
		*pod_id = 0;
		*pod_ip4 = 0;
		return STRAIT_DROP_SOURCE_IP_INVALID;
	}
	*pod_id = pod->identity;
	*pod_ip4 = pod->ip4;
	return pod->ip4 == saddr ? STRAIT_DROP_NONE : STRAIT_DROP_SOURCE_IP_INVALID;
}

/* What a policy match means for a packet travelling pod to pod. */
static __always_inline enum strait_drop_reason strait_tc_match_reason(enum strait_policy_match m)
{
	if (!strait_match_allows(m))
		return STRAIT_DROP_POLICY_DENIED;
	if (m == STRAIT_MATCH_PROXY)
		return STRAIT_DROP_PROXY_REQUIRED;
	return STRAIT_DROP_NONE;
}

/*
 * Judges a tracked flow again under policy revision rev, from its original
 * direction (the entry's key). Flows without ports are left alone.
 */
static __always_inline enum strait_drop_reason
strait_tc_rejudge(const struct strait_pkt *pkt, enum strait_ct_state state, __u32 src_id,
		  __u32 dst_id)
{
	if (!strait_has_ports(pkt->tuple.protocol))
		return STRAIT_DROP_NONE;
	if (state == STRAIT_CT_REPLY)
		return strait_tc_match_reason(strait_policy_check(dst_id, src_id, pkt->tuple.protocol,
								  pkt->tuple.sport));
	return strait_tc_match_reason(strait_policy_check(src_id, dst_id, pkt->tuple.protocol,
							  pkt->policy_dport));
}

/*
 * Returns STRAIT_DROP_NONE to let the packet pass, else why it is dropped.
 * rev is strait_config.policy_rev; report_bit the STRAIT_CT_REPORTED_* bit of
 * the calling hook. *report is set when this packet is the first of a non-TCP
 * flow in its own direction that this hook sees: the caller reports the flow.
 */
static __always_inline enum strait_drop_reason
strait_tc_judge(const struct strait_pkt *pkt, __u32 src_id, __u32 dst_id, __u64 now, __u32 rev,
		__u32 report_bit, int *report)
{
	struct strait_frag_key fk = strait_frag_key_of(pkt);
	struct strait_frag_entry fe;
	enum strait_drop_reason reason;
	enum strait_ct_state state;
	struct strait_ct_key key;
	struct strait_ct_entry *e;

	*report = 0;
	if (pkt->frag == STRAIT_FRAG_LATER)
		return bpf_map_lookup_elem(&strait_frags, &fk) ? STRAIT_DROP_NONE
							       : STRAIT_DROP_FRAG_NOT_FOUND;
	if (src_id == STRAIT_ID_HOST || dst_id == STRAIT_ID_HOST)
		goto allowed;
	if (pkt->has_inner && strait_ct_lookup(&pkt->inner, now) != STRAIT_CT_NEW)
		goto allowed;
	e = strait_ct_get(&pkt->tuple, now, &state, &key);
	if (e) {
		if (e->policy_rev != rev) {
			reason = strait_tc_rejudge(pkt, state, src_id, dst_id);
			if (reason != STRAIT_DROP_NONE) {
				bpf_map_delete_elem(&strait_ct, &key);
				return reason;
			}
			e->policy_rev = rev;
		}
		if (state == STRAIT_CT_ESTABLISHED && !(e->reported & report_bit) &&
		    pkt->tuple.protocol != STRAIT_IPPROTO_TCP) {
			e->reported |= report_bit;
			*report = 1;
		}
		goto allowed;
	}
	reason = strait_tc_match_reason(
		strait_policy_check(src_id, dst_id, pkt->tuple.protocol, pkt->policy_dport));
	if (reason != STRAIT_DROP_NONE)
		return reason;
	*report = pkt->tuple.protocol != STRAIT_IPPROTO_TCP;
	strait_ct_create(&pkt->tuple, now, rev, *report ? report_bit : 0);
allowed:
	if (pkt->frag == STRAIT_FRAG_FIRST) {
		fe.sport = pkt->tuple.sport;
		fe.dport = pkt->tuple.dport;
		bpf_map_update_elem(&strait_frags, &fk, &fe, BPF_ANY);
	}
	return STRAIT_DROP_NONE;
}

#endif /* STRAIT_TC_H */
