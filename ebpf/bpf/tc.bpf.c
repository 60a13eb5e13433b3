/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tc programs on each pod's host-side veth (lxc..., in the node's network
 * namespace), attached with TCX links:
 *
 *   strait_tc_from_pod  ingress of the host veth = packets leaving the pod
 *   strait_tc_to_pod    egress of the host veth  = packets entering the pod
 *
 * Leaving a pod, an IPv4 packet must carry the pod's own source address
 * (strait_pod_ifs), else it is dropped before anything else looks at it.
 * Both then judge IPv4 packets the same way (tc.h): the sending pod's identity
 * (from-pod) or the source's from strait_ipcache (to-pod), the destination's
 * from strait_ipcache, then conntrack and policy. Non-IPv4 frames (ARP, IPv6)
 * pass unjudged.
 * Dropped packets are counted and reported (drop.h). The programs pass with
 * TC_ACT_OK, which also ends the TCX chain.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "strait_abi.h"
#include "maps.h"
#include "parse.h"
#include "drop.h"
#include "tc.h"

static __always_inline __u32 strait_policy_rev(void)
{
	__u32 zero = 0;
	const struct strait_config *cfg = bpf_map_lookup_elem(&strait_cfg, &zero);

	return cfg ? cfg->policy_rev : 0;
}

/* Reports the first packet of a flow other than TCP (tc.h). */
static __always_inline void strait_tc_report(const struct __sk_buff *skb,
					     const struct strait_pkt *pkt, __u8 hook,
					     __u32 src_id, __u32 dst_id)
{
	struct strait_flow_event fe = {
		.ktime_ns = bpf_ktime_get_ns(),
		.bytes_sent = skb->len,
		.src_ip4 = pkt->tuple.saddr,
		.dst_ip4 = pkt->tuple.daddr,
		.sport = pkt->tuple.sport,
		.dport = pkt->tuple.dport,
		.protocol = pkt->tuple.protocol,
		.direction = hook == STRAIT_HOOK_TC_FROM_POD ? STRAIT_FLOW_EGRESS
							      : STRAIT_FLOW_INGRESS,
		.src_identity = src_id,
		.dst_identity = dst_id,
		.hook = hook,
	};

	bpf_ringbuf_output(&strait_flowev, &fe, sizeof(fe), 0);
}

static __always_inline int strait_tc(struct __sk_buff *skb, __u8 hook)
{
	struct strait_drop_event ev = {};
	int report = 0;
	struct strait_pkt pkt;
	enum strait_parse_result parsed = strait_parse(skb, &pkt);
	__u32 src_id, dst_id;

	if (parsed == STRAIT_PARSE_NOT_IPV4)
		return TC_ACT_OK;
	ev.hook = hook;
	ev.ifindex = skb->ifindex;
	ev.src_ip = pkt.tuple.saddr;
	ev.dst_ip = pkt.tuple.daddr;
	ev.sport = pkt.tuple.sport;
	ev.dport = pkt.tuple.dport;
	ev.protocol = pkt.tuple.protocol;
	if (hook == STRAIT_HOOK_TC_FROM_POD)
		ev.reason = strait_tc_check_source(skb->ifindex, pkt.tuple.saddr, &ev.src_identity,
						   &ev.pod_ip4);
	if (parsed != STRAIT_PARSE_OK) {
		ev.reason = STRAIT_DROP_INVALID;
		strait_drop_notify(&ev);
		return TC_ACT_SHOT;
	}
	dst_id = strait_ipcache_identity(pkt.tuple.daddr);
	if (ev.reason != STRAIT_DROP_NONE) {
		ev.dst_identity = dst_id;
		strait_drop_notify(&ev);
		return TC_ACT_SHOT;
	}

	/* Leaving a pod: its verified identity, never one looked up from its packet. */
	src_id = hook == STRAIT_HOOK_TC_FROM_POD ? ev.src_identity
						 : strait_ipcache_identity(pkt.tuple.saddr);
	ev.reason = strait_tc_judge(&pkt, src_id, dst_id, bpf_ktime_get_ns(), strait_policy_rev(),
				    hook == STRAIT_HOOK_TC_FROM_POD ? STRAIT_CT_REPORTED_EGRESS
								    : STRAIT_CT_REPORTED_INGRESS,
				    &report);
	if (ev.reason == STRAIT_DROP_NONE) {
		if (report)
			strait_tc_report(skb, &pkt, hook, src_id, dst_id);
		return TC_ACT_OK;
	}
	ev.src_identity = src_id;
	ev.dst_identity = dst_id;
	strait_drop_notify(&ev);
	return TC_ACT_SHOT;
}

SEC("classifier")
int strait_tc_from_pod(struct __sk_buff *skb)
{
	return strait_tc(skb, STRAIT_HOOK_TC_FROM_POD);
}

SEC("classifier")
int strait_tc_to_pod(struct __sk_buff *skb)
{
	return strait_tc(skb, STRAIT_HOOK_TC_TO_POD);
}

/* GPL-compatible so that GPL-only helpers stay usable; as Cilium's datapath. */
char _license[] SEC("license") = "Dual BSD/GPL";
