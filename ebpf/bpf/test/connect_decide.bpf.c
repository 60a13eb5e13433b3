/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Test-only wrapper: runs the decision helpers of connect.h on values taken
 * from a BPF_PROG_TEST_RUN packet (sock_addr programs have no test run), and
 * writes the decision back into the packet. Driven by ebpf/tests/decide.rs;
 * never loaded by the agent.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "strait_abi.h"
#include "connect.h"

enum strait_decide_mode {
	STRAIT_DECIDE_CONNECT4 = 0,	/* strait_connect4_decide */
	STRAIT_DECIDE_CONNECT6 = 1,	/* strait_ip6_v4_mapped + strait_connect6_mapped_decide */
	STRAIT_DECIDE_CLIENT_KEY = 2,	/* strait_client_key(dst_ip, local_port) */
};

/* The packet's first bytes. */
struct strait_decide_in {
	struct strait_config cfg;
	__u32 has_cfg;		/* 0: decide as if the config entry were missing */
	__u32 mode;		/* enum strait_decide_mode */
	__be32 dst_ip;
	__be16 dst_port;
	__u16 pad;
	__u32 bypassed;
	__u32 ip6[4];		/* CONNECT6: destination, network order */
	__u32 local_port;	/* CLIENT_KEY: host order, as bpf_sock_ops has it */
};
_Static_assert(sizeof(struct strait_decide_in) == 56, "strait_decide_in layout");

/* Written over the packet's first bytes. */
struct strait_decide_out {
	__u32 verdict;		/* enum strait_connect_verdict */
	__u32 reason;		/* enum strait_drop_reason */
	__be32 ip4;
	__be16 port;
	__u16 pad;
};
_Static_assert(sizeof(struct strait_decide_out) == 16, "strait_decide_out layout");

SEC("classifier")
int strait_test_decide(struct __sk_buff *skb)
{
	struct strait_decide_in in;
	struct strait_decide_out out = {};
	struct strait_connect_decision d = {};
	struct strait_sock_key key;
	const struct strait_config *cfg;
	__be32 mapped_ip;

	if (bpf_skb_load_bytes(skb, 0, &in, sizeof(in)))
		return -1;
	cfg = in.has_cfg ? &in.cfg : NULL;

	switch (in.mode) {
	case STRAIT_DECIDE_CONNECT4:
		d = strait_connect4_decide(cfg, in.dst_ip, in.dst_port, in.bypassed);
		break;
	case STRAIT_DECIDE_CONNECT6:
		if (strait_ip6_v4_mapped(in.ip6[0], in.ip6[1], in.ip6[2], in.ip6[3],
					 &mapped_ip))
			d = strait_connect6_mapped_decide(cfg, mapped_ip, in.dst_port,
							  in.bypassed);
		break;
	case STRAIT_DECIDE_CLIENT_KEY:
		key = strait_client_key(in.dst_ip, in.local_port);
		d.ip4 = key.ip4;
		d.port = key.port;
		out.pad = key.pad;
		break;
	default:
		return -1;
	}
	out.verdict = d.verdict;
	out.reason = d.reason;
	out.ip4 = d.ip4;
	out.port = d.port;
	if (bpf_skb_store_bytes(skb, 0, &out, sizeof(out), 0))
		return -1;
	return 0;
}

char _license[] SEC("license") = "Dual BSD/GPL";
