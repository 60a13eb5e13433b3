/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Minimal connection tracking for the tc programs (strait_ct).
 *
 * An entry is created when tc allows the first packet of a flow (by policy,
 * or because nothing is enforced). Afterwards packets of the same 5-tuple
 * (ESTABLISHED) and of the reverse tuple (REPLY) pass without a policy
 * lookup while the entry's policy revision is current, so replies of allowed
 * UDP flows get back. After a policy change (strait_config.policy_rev) the
 * next packet judges the flow again, once: a flow the new policy denies stops
 * here (tc.h). An entry idle for longer than its lifetime counts as absent:
 * the next packet is judged again. There is no TCP state machine: kernel-path
 * TCP sockets are tracked per socket (strait_sock), and pod <-> gateway
 * traffic (the proxy) is never tracked.
 */
#ifndef STRAIT_CONNTRACK_H
#define STRAIT_CONNTRACK_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "strait_abi.h"
#include "maps.h"

#define STRAIT_NS_PER_S		1000000000ULL
/* seen_ns is rewritten at most this often, to spare shared cache lines. */
#define STRAIT_CT_REFRESH_NS	STRAIT_NS_PER_S

enum strait_ct_state {
	STRAIT_CT_NEW = 0,		/* no live entry either way */
	STRAIT_CT_ESTABLISHED = 1,	/* the tuple itself is tracked */
	STRAIT_CT_REPLY = 2,		/* its reverse is tracked */
};

static __always_inline struct strait_ct_key
strait_ct_reverse(const struct strait_ct_key *k)
{
	struct strait_ct_key r = {
		.saddr = k->daddr,
		.daddr = k->saddr,
		.sport = k->dport,
		.dport = k->sport,
		.protocol = k->protocol,
	};

	return r;
}

static __always_inline __u64 strait_ct_lifetime_ns(__u8 protocol)
{
	return (protocol == STRAIT_IPPROTO_TCP ? STRAIT_CT_LIFETIME_TCP_S
					       : STRAIT_CT_LIFETIME_OTHER_S) *
	       STRAIT_NS_PER_S;
}

/* Whether an entry last seen at seen_ns is still alive at now (pure). */
static __always_inline int strait_ct_alive(__u64 seen_ns, __u8 protocol, __u64 now)
{
	return now <= seen_ns || now - seen_ns <= strait_ct_lifetime_ns(protocol);
}

/* The live entry of exactly this tuple, refreshed; NULL if none. */
static __always_inline struct strait_ct_entry *
strait_ct_find(const struct strait_ct_key *k, __u64 now)
{
	struct strait_ct_entry *e = bpf_map_lookup_elem(&strait_ct, k);

	if (!e || !strait_ct_alive(e->seen_ns, k->protocol, now))
		return NULL;
	if (now > e->seen_ns + STRAIT_CT_REFRESH_NS)
		e->seen_ns = now;
	return e;
}

static __always_inline enum strait_ct_state
strait_ct_lookup(const struct strait_ct_key *k, __u64 now)
{
	struct strait_ct_key rev;

	if (strait_ct_find(k, now))
		return STRAIT_CT_ESTABLISHED;
	rev = strait_ct_reverse(k);
	if (strait_ct_find(&rev, now))
		return STRAIT_CT_REPLY;
	return STRAIT_CT_NEW;
}

/*
 * The live entry of k's flow, either direction: *state says which (NEW and
 * NULL when there is none). *key receives the tuple the entry is stored under.
 */
static __always_inline struct strait_ct_entry *
strait_ct_get(const struct strait_ct_key *k, __u64 now, enum strait_ct_state *state,
	      struct strait_ct_key *key)
{
	struct strait_ct_entry *e;

	*key = *k;
	e = strait_ct_find(key, now);
	if (e) {
		*state = STRAIT_CT_ESTABLISHED;
		return e;
	}
	*key = strait_ct_reverse(k);
	e = strait_ct_find(key, now);
	*state = e ? STRAIT_CT_REPLY : STRAIT_CT_NEW;
	return e;
}

/* Tracks an allowed flow (replacing an expired entry of the same tuple). */
static __always_inline void strait_ct_create(const struct strait_ct_key *k, __u64 now,
					     __u32 policy_rev, __u32 reported)
{
	struct strait_ct_entry e = {
		.created_ns = now,
		.seen_ns = now,
		.policy_rev = policy_rev,
		.reported = reported,
	};

	/* A full LRU evicts; a failure only means replies are judged by policy. */
	bpf_map_update_elem(&strait_ct, k, &e, BPF_ANY);
}

#endif /* STRAIT_CONNTRACK_H */
