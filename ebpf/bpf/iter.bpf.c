/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The TCP socket iterator: after a policy or service change, user space
 * (Datapath::rejudge_sockets) reads this iterator once per pod network
 * namespace; for each kernel-path socket (one with strait_sock storage) that
 * rejudge.h no longer allows, it records why in the storage (so the close
 * flow sockops reports names it), destroys the socket with the
 * bpf_sock_destroy kfunc (kernel >= 6.5: the local side gets ECONNABORTED,
 * the peer a RST), and writes one struct strait_iter_record.
 *
 * Not loaded by aya (it cannot relocate kfunc calls): ebpf/src/iter.rs loads
 * it with raw bpf() calls, binding the maps to the node's pinned ones by name.
 * No vmlinux.h: the context and the kernel types are declared below; the
 * verifier checks every access against the kernel's BTF.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "strait_abi.h"
#include "maps.h"
#include "policy.h"
#include "rejudge.h"

/* Only ever used through pointers the kernel hands out. */
struct seq_file;
struct sock_common;
struct tcp_sock;

/* include/linux/bpf.h */
struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
} __attribute__((aligned(8)));

/* net/ipv4/tcp_ipv4.c: DEFINE_BPF_ITER_FUNC(tcp, ...) */
struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	__u32 uid __attribute__((aligned(8)));
};

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

SEC("iter/tcp")
int strait_iter_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct strait_iter_record rec = {};
	struct strait_sock *st;
	struct tcp_sock *tp;
	__u16 reason;

	if (!skc)
		return 0;
	/* Listeners, request and time-wait sockets have no storage: skip them. */
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	st = bpf_sk_storage_get(&strait_sock, tp, 0, 0);
	if (!st)
		return 0;
	reason = strait_rejudge(st->src_ip4, st->dst_ip4, st->dport, st->svc_ip4, st->svc_port);
	if (reason == STRAIT_DROP_NONE)
		return 0;
	st->close_reason = reason;
	rec.reason = reason;
	rec.error = bpf_sock_destroy(skc);
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}

char _license[] SEC("license") = "Dual BSD/GPL";
