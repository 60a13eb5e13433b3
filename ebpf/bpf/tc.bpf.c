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

static __always_inline int strait_tc(struct __sk_buff *skb, __u8 hook)
{
	struct strait_drop_event ev = {};
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
	ev.reason = strait_tc_judge(&pkt, src_id, dst_id, bpf_ktime_get_ns());
	if (ev.reason == STRAIT_DROP_NONE)
		return TC_ACT_OK;
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
