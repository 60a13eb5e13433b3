/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TCP socket operations of the pods' sockets (attached to the node cgroup).
 *
 *   TCP_CONNECT_CB  fires in tcp_connect(), after the source port is chosen
 *                   and before the SYN leaves: a socket that connect4
 *                   redirected gets its original destination copied under
 *                   its client {local ip4, local port}, the address the
 *                   proxy sees as the peer of the connection it accepts.
 *                   No callback flags are needed for this one.
 *   STATE_CB        (enabled per socket above) drops the socket-cookie record
 *                   once the socket reaches TCP_CLOSE.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "strait_abi.h"
#include "maps.h"
#include "connect.h"

static __always_inline void strait_on_tcp_connect(struct bpf_sock_ops *skops)
{
	const struct strait_orig_dst *found;
	struct strait_orig_dst orig;
	struct strait_sock_key key;
	__u64 cookie;

	if (skops->family != STRAIT_AF_INET)
		return;
	cookie = bpf_get_socket_cookie(skops);
	found = bpf_map_lookup_elem(&strait_orig_ck, &cookie);
	if (!found)
		return;
	orig = *found;
	key = strait_client_key(skops->local_ip4, skops->local_port);
	bpf_map_update_elem(&strait_orig_tp, &key, &orig, BPF_ANY);
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						 BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void strait_on_state_change(struct bpf_sock_ops *skops)
{
	__u64 cookie;

	if (skops->args[1] != BPF_TCP_CLOSE)
		return;
	cookie = bpf_get_socket_cookie(skops);
	bpf_map_delete_elem(&strait_orig_ck, &cookie);
}

SEC("sockops")
int strait_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		strait_on_tcp_connect(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		strait_on_state_change(skops);
		break;
	default:
		break;
	}
	return 1;
}

/* GPL-compatible so that GPL-only helpers stay usable; as Cilium's datapath. */
char _license[] SEC("license") = "Dual BSD/GPL";
