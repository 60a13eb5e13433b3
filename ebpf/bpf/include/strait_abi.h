/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every type shared between Strait's eBPF programs and user space.
 *
 * The Rust mirrors live in ebpf/src/abi.rs; its tests compile assertions
 * generated from the Rust layout against this header with `clang -target bpf`,
 * so a change here that is not made there (or the other way round) fails
 * `cargo test -p strait-ebpf`.
 *
 * Byte order: addresses and ports are stored in network byte order, exactly as
 * the kernel hands them to cgroup/connect4 (`user_ip4`, `user_port`), so the
 * programs copy them without conversion. Padding is explicit and always zero:
 * it is part of hash keys.
 */
#ifndef STRAIT_ABI_H
#define STRAIT_ABI_H

#include <linux/types.h>

/* --- sizes of the maps in maps.h (user space checks reused pins against them) */
#define STRAIT_CONFIG_MAX	1	/* strait_cfg: one entry, index 0 */
#define STRAIT_BYPASS_MAX	64	/* strait_bypass */
#define STRAIT_ORIG_MAX		65536	/* strait_orig_ck and strait_orig_tp (LRU) */

/* --- strait_config.flags */
/* Redirection switched off on purpose: every connect passes unchanged. */
#define STRAIT_CFG_DISABLED	(1U << 0)

/*
 * The one entry of the strait_cfg array map.
 * proxy_ip4 == 0 means "not configured yet": connect4 then fails closed
 * (connect() returns EPERM) instead of letting a pod bypass the proxy.
 */
struct strait_config {
	__be32 proxy_ip4;	/* node proxy outbound listener, network order */
	__be16 proxy_port;	/* network order */
	__u16 pad;		/* zero */
	__u32 flags;		/* STRAIT_CFG_* */
};
_Static_assert(sizeof(struct strait_config) == 12, "strait_config layout");

/* Where a redirected socket originally connected to (value of both orig maps). */
struct strait_orig_dst {
	__be32 ip4;		/* network order */
	__be16 port;		/* network order */
	__u16 pad;		/* zero */
};
_Static_assert(sizeof(struct strait_orig_dst) == 8, "strait_orig_dst layout");

/*
 * Key of strait_orig_tp: the client's side of a redirected connection, which
 * is what the proxy sees as the peer of the socket it accepted.
 */
struct strait_sock_key {
	__be32 ip4;		/* client local address, network order */
	__be16 port;		/* client local port, network order */
	__u16 pad;		/* zero: part of the hash key */
};
_Static_assert(sizeof(struct strait_sock_key) == 8, "strait_sock_key layout");

/*
 * Why Strait dropped or refused something. One list for kernel drops, proxy
 * denials, flow records and metrics. Values of reasons Cilium also has are
 * Cilium's (its DROP_* codes without the sign), so people who know Hubble's
 * output recognise them; Strait's own start at 190.
 */
enum strait_drop_reason {
	STRAIT_DROP_NONE = 0,
	STRAIT_DROP_POLICY_DENIED = 133,
	/* The node proxy's address is not configured: fail closed. */
	STRAIT_DROP_NO_PROXY = 190,
	/* An IPv4-mapped IPv6 connect that would have bypassed the proxy. */
	STRAIT_DROP_V4_MAPPED_V6 = 191,
	/* The original destination could not be recorded, so it was not redirected. */
	STRAIT_DROP_ORIG_DST_UNRECORDED = 192,
};

#endif /* STRAIT_ABI_H */
