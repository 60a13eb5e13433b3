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
 *   ACTIVE_ESTABLISHED_CB   a socket connect4 sent on the kernel fast path
 *                   (strait_sock, role CLIENT) is established: its start time
 *                   and local address are recorded.
 *   PASSIVE_ESTABLISHED_CB  a pod accepted a connection from another pod (not
 *                   from the node proxy, whose connections come from the node
 *                   gateway, identity HOST): the socket is tagged as a SERVER,
 *                   so that the destination node reports the flow too.
 *   STATE_CB        (enabled per socket above) at TCP_CLOSE: drops the
 *                   socket-cookie record of redirected sockets, and reports
 *                   the flow of kernel-path sockets (strait_flowev) with the
 *                   socket's byte counters.
 *
 * Ports: bpf_sock_ops has local_port in host order, and remote_port as the
 * network-order port in the upper 16 bits on little-endian machines (the
 * kernel loads skc_dport and shifts it).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "strait_abi.h"
#include "maps.h"
#include "connect.h"
#include "policy.h"

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

static __always_inline __be16 strait_remote_port(const struct bpf_sock_ops *skops)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return (__be16)(skops->remote_port >> 16);
#else
	return (__be16)skops->remote_port;
#endif
}

static __always_inline void strait_watch_close(struct bpf_sock_ops *skops)
{
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						 BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void strait_on_active_established(struct bpf_sock_ops *skops)
{
	struct strait_sock *s;
	struct bpf_sock *sk = skops->sk;

	if (skops->family != STRAIT_AF_INET || !sk)
		return;
	s = bpf_sk_storage_get(&strait_sock, sk, NULL, 0);
	if (!s || s->role != STRAIT_SOCK_CLIENT)
		return;
	s->start_ns = bpf_ktime_get_ns();
	s->src_ip4 = skops->local_ip4;
	s->sport = bpf_htons((__u16)skops->local_port);
	strait_watch_close(skops);
}

static __always_inline void strait_on_passive_established(struct bpf_sock_ops *skops)
{
	struct strait_sock *s;
	struct bpf_sock *sk = skops->sk;
	__u32 src_id;

	if (skops->family != STRAIT_AF_INET || !sk)
		return;
	src_id = strait_ipcache_identity(skops->remote_ip4);
	/* From the node proxy (or the node itself): the proxy reports those. */
	if (src_id == STRAIT_ID_HOST)
		return;
	s = bpf_sk_storage_get(&strait_sock, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s)
		return;
	s->start_ns = bpf_ktime_get_ns();
	s->src_ip4 = skops->remote_ip4;
	s->sport = strait_remote_port(skops);
	s->dst_ip4 = skops->local_ip4;
	s->dport = bpf_htons((__u16)skops->local_port);
	s->svc_ip4 = 0;
	s->svc_port = 0;
	s->role = STRAIT_SOCK_SERVER;
	s->protocol = STRAIT_IPPROTO_TCP;
	s->src_identity = src_id;
	s->dst_identity = strait_ipcache_identity(skops->local_ip4);
	s->close_reason = STRAIT_DROP_NONE;
	s->pad = 0;
	strait_watch_close(skops);
}

/* Whether a socket leaving old_state for TCP_CLOSE had sent its FIN. */
static __always_inline int strait_fin_sent(__u32 old_state)
{
	return old_state == BPF_TCP_FIN_WAIT1 || old_state == BPF_TCP_FIN_WAIT2 ||
	       old_state == BPF_TCP_CLOSING || old_state == BPF_TCP_TIME_WAIT ||
	       old_state == BPF_TCP_LAST_ACK;
}

/*
 * Whether a socket leaving old_state for TCP_CLOSE had received its peer's
 * FIN (FIN_WAIT2 leaves for TIME_WAIT, hence CLOSE, on the peer's FIN).
 */
static __always_inline int strait_fin_received(__u32 old_state)
{
	return old_state == BPF_TCP_CLOSE_WAIT || old_state == BPF_TCP_LAST_ACK ||
	       old_state == BPF_TCP_CLOSING || old_state == BPF_TCP_TIME_WAIT ||
	       old_state == BPF_TCP_FIN_WAIT2;
}

/* Reports the flow of a kernel-path socket that reached TCP_CLOSE. */
static __always_inline void strait_report_closed(struct bpf_sock_ops *skops)
{
	struct strait_flow_event ev = {};
	struct strait_sock *s;
	struct bpf_sock *sk = skops->sk;
	__u64 now = bpf_ktime_get_ns();
	__u64 acked, received;
	__u32 snd_una, snd_nxt, old_state;

	if (!sk)
		return;
	s = bpf_sk_storage_get(&strait_sock, sk, NULL, 0);
	if (!s || !s->start_ns)
		return;
	ev.ktime_ns = now;
	ev.duration_ns = now > s->start_ns ? now - s->start_ns : 0;
	/*
	 * bytes_acked: sent by this socket and acknowledged; bytes_received:
	 * received. Both are read before branching: the verifier refuses a
	 * context field read through a computed offset.
	 */
	acked = skops->bytes_acked;
	barrier_var(acked);
	received = skops->bytes_received;
	barrier_var(received);
	snd_una = skops->snd_una;
	barrier_var(snd_una);
	snd_nxt = skops->snd_nxt;
	barrier_var(snd_nxt);
	old_state = skops->args[0];
	/*
	 * bytes_acked counts sequence numbers: the active opener's SYN, and a
	 * FIN once acknowledged. Flows count data only.
	 */
	if (strait_fin_sent(old_state) && snd_una == snd_nxt && acked)
		acked--;
	if (s->role == STRAIT_SOCK_CLIENT && acked)
		acked--;
	/* bytes_received likewise counts the peer's FIN. */
	if (strait_fin_received(old_state) && received)
		received--;
	if (s->role == STRAIT_SOCK_SERVER) {
		ev.bytes_sent = received;
		ev.bytes_received = acked;
		ev.direction = STRAIT_FLOW_INGRESS;
	} else {
		ev.bytes_sent = acked;
		ev.bytes_received = received;
		ev.direction = STRAIT_FLOW_EGRESS;
	}
	ev.src_ip4 = s->src_ip4;
	ev.dst_ip4 = s->dst_ip4;
	ev.svc_ip4 = s->svc_ip4;
	ev.sport = s->sport;
	ev.dport = s->dport;
	ev.svc_port = s->svc_port;
	ev.protocol = STRAIT_IPPROTO_TCP;
	ev.src_identity = s->src_identity;
	ev.dst_identity = s->dst_identity;
	ev.close_reason = s->close_reason;
	ev.hook = STRAIT_HOOK_SOCKOPS;
	/* Once: a socket reaches TCP_CLOSE once, but be sure. */
	s->start_ns = 0;
	bpf_ringbuf_output(&strait_flowev, &ev, sizeof(ev), 0);
}

static __always_inline void strait_on_state_change(struct bpf_sock_ops *skops)
{
	__u64 cookie;

	if (skops->args[1] != BPF_TCP_CLOSE)
		return;
	cookie = bpf_get_socket_cookie(skops);
	bpf_map_delete_elem(&strait_orig_ck, &cookie);
	strait_report_closed(skops);
}

SEC("sockops")
int strait_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		strait_on_tcp_connect(skops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		strait_on_active_established(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		strait_on_passive_established(skops);
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
