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

/*
 * UDP socket LB: {socket cookie, backend} -> the Service frontend dialed,
 * written by connect4 / sendmsg4 when they send a UDP socket to a backend,
 * read by recvmsg4 and getpeername4. LRU evicts old sockets.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, STRAIT_UDP_RNAT_MAX);
	__type(key, struct strait_udp_rnat_key);
	__type(value, struct strait_orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_udp_rnat SEC(".maps");

/* --- pod interfaces: written by user space only (Datapath::attach_pod_interface) */

/*
 * Ifindex (__u32) of a pod's host-side veth -> struct strait_pod_if. Read by
 * tc on packets leaving the pod; an interface without an entry lets no IPv4
 * out (fail closed). Written before tc is attached, removed after detaching.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STRAIT_POD_IFS_MAX);
	__type(key, __u32);
	__type(value, struct strait_pod_if);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_pod_ifs SEC(".maps");

/* --- policy: written by user space only (Datapath::apply_policy) -------- */

/* IPv4 prefix -> identity (__u32). See struct strait_ipcache_key. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, STRAIT_IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct strait_ipcache_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_ipcache SEC(".maps");

/* Pod cgroup id (__u64) -> struct strait_endpoint. Read by connect4. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STRAIT_ENDPOINTS_MAX);
	__type(key, __u64);
	__type(value, struct strait_endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_endpoint SEC(".maps");

/* Identity (__u32) -> STRAIT_POLICED_* flags (__u32). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STRAIT_POLICED_MAX);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_policed SEC(".maps");

/* {src, dst, protocol, dport} prefix -> enum strait_policy_action (__u32). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, STRAIT_POLICY_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct strait_policy_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_policy SEC(".maps");

/*
 * Other clusters' identities and ports whose L7 rules only their own nodes
 * know (struct strait_via_proxy_key): connect4 sends such a connection to the
 * proxy instead of the fast path. Value unused (1). Written by user space.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STRAIT_VIA_PROXY_MAX);
	__type(key, struct strait_via_proxy_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_viaproxy SEC(".maps");

/* Service frontend -> backend identities and target ports. Read by connect4. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STRAIT_SVC_MAX);
	__type(key, struct strait_svc_key);
	__type(value, struct strait_svc_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_svc_ids SEC(".maps");

/* --- state written by the tc programs --------------------------------- */

/*
 * Flows allowed at tc, keyed by the 5-tuple of their first packet. Packets
 * of the same tuple, and of its reverse (replies), pass without a policy
 * lookup until the flow idles out (STRAIT_CT_LIFETIME_*); so a policy update
 * never cuts a flow that was allowed when it started. LRU evicts the rest.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, STRAIT_CT_MAX);
	__type(key, struct strait_ct_key);
	__type(value, struct strait_ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_ct SEC(".maps");

/* IPv4 datagrams whose first fragment was allowed: later fragments follow it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, STRAIT_FRAG_MAX);
	__type(key, struct strait_frag_key);
	__type(value, struct strait_frag_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_frags SEC(".maps");

/* --- the kernel fast path ---------------------------------------------- */

/*
 * Per-socket state of TCP connections on the kernel fast path (struct
 * strait_sock), kept by the kernel with the socket and freed with it.
 * Written by connect4 and sockops, judged again by the socket iterator.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct strait_sock);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_sock SEC(".maps");

/* --- observability ------------------------------------------------------ */

/* struct strait_drop_event records, read by Datapath::drop_events. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, STRAIT_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_events SEC(".maps");

/* struct strait_flow_event records: flows the kernel allowed without the proxy. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, STRAIT_FLOW_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_flowev SEC(".maps");

/* Per-CPU drop counters (__u64), indexed by enum strait_drop_reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STRAIT_DROP_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} strait_drops SEC(".maps");

#endif /* STRAIT_MAPS_H */
