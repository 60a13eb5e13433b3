/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Test-only wrapper: runs the lookups of policy.h and conntrack.h on values
 * taken from a BPF_PROG_TEST_RUN packet and writes the result back into it.
 * Loaded by ebpf/tests/policy_decide.rs with the pin directory of a
 * Datapath, so it reads the maps Datapath::apply_policy wrote. Never loaded
 * by the agent.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "strait_abi.h"
#include "maps.h"
#include "policy.h"
#include "conntrack.h"

enum strait_policy_mode {
	STRAIT_MODE_CHECK = 0,		/* strait_policy_check(src_id, dst_id, protocol, dport) */
	STRAIT_MODE_IPCACHE = 1,	/* strait_ipcache_identity(ip) */
	STRAIT_MODE_CONNECT = 2,	/* strait_connect4_policy(src_id, ip, dport) */
	STRAIT_MODE_CT_CREATE = 3,	/* strait_ct_create(tuple, now) */
	STRAIT_MODE_CT_LOOKUP = 4,	/* strait_ct_lookup(tuple, now) */
};

/* The packet's first bytes. */
struct strait_policy_in {
	__u32 mode;
	__u32 src_id;
	__u32 dst_id;
	__u8 protocol;
	__u8 pad;
	__be16 dport;
	__be32 ip;
	struct strait_ct_key tuple;
	__u32 pad2;
	__u64 now;
};
_Static_assert(sizeof(struct strait_policy_in) == 48, "strait_policy_in layout");

/* Written over the packet's first bytes. */
struct strait_policy_out {
	__u32 result;		/* enum strait_policy_match, identity or enum strait_ct_state */
	__u32 identity;		/* CONNECT: the identity judged */
};

SEC("classifier")
int strait_test_policy(struct __sk_buff *skb)
{
	struct strait_policy_in in;
	struct strait_policy_out out = {};

	if (bpf_skb_load_bytes(skb, 0, &in, sizeof(in)))
		return -1;
	switch (in.mode) {
	case STRAIT_MODE_CHECK:
		out.result = strait_policy_check(in.src_id, in.dst_id, in.protocol, in.dport);
		break;
	case STRAIT_MODE_IPCACHE:
		out.result = strait_ipcache_identity(in.ip);
		break;
	case STRAIT_MODE_CONNECT:
		out.result = strait_connect4_policy(in.src_id, in.ip, in.dport, &out.identity);
		break;
	case STRAIT_MODE_CT_CREATE:
		strait_ct_create(&in.tuple, in.now, 0, 0);
		break;
	case STRAIT_MODE_CT_LOOKUP:
		out.result = strait_ct_lookup(&in.tuple, in.now);
		break;
	default:
		return -1;
	}
	if (bpf_skb_store_bytes(skb, 0, &out, sizeof(out), 0))
		return -1;
	return 0;
}

char _license[] SEC("license") = "Dual BSD/GPL";
