/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every map of Strait's eBPF programs, in one place.
 *
 * All maps are BTF-defined and pinned by name (LIBBPF_PIN_BY_NAME). The loader
 * sets the pin directory to the node's directory (/sys/fs/bpf/strait/<lab>/
 * <cluster>-<node>), so:
 *   - the objects built from sock.bpf.c and sockops.bpf.c share the maps
 *     (the first load creates and pins them, the second reuses the pins);
 *   - a restarted agent reuses the maps of the one before it, including the
 *     original destinations of connections still waiting to be accepted.
 * Names are at most 15 characters (BPF_OBJ_NAME_LEN - 1).
 */
#ifndef STRAIT_MAPS_H
#define STRAIT_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "strait_abi.h"

/* Index 0: the node's struct strait_config. Written by user space only. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, STRAIT_CONFIG_MAX);
	__type(key, __u32);
	__type(value, struct strait_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_cfg SEC(".maps");

/*
 * Destinations never redirected (node-local addresses such as the node
 * gateway, where the DNS server and the proxy live). Key: IPv4 address in
 * network order; value: unused (1). Written by user space only.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STRAIT_BYPASS_MAX);
	__type(key, __be32);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_bypass SEC(".maps");

/*
 * Socket cookie -> original destination, written by cgroup/connect4 when it
 * redirects. Read by cgroup/getpeername4 (the application keeps seeing the
 * address it dialed) and by sockops (to fill strait_orig_tp). sockops deletes
 * the entry when the socket reaches TCP_CLOSE; LRU evicts the rest.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, STRAIT_ORIG_MAX);
	__type(key, __u64);
	__type(value, struct strait_orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_orig_ck SEC(".maps");

/*
 * Client {local ip4, local port} -> original destination, written by sockops
 * once the source port is known. The proxy takes (looks up and deletes) the
 * entry for the peer address of each connection it accepts.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, STRAIT_ORIG_MAX);
	__type(key, struct strait_sock_key);
	__type(value, struct strait_orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_orig_tp SEC(".maps");

#endif /* STRAIT_MAPS_H */
