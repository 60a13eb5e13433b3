/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Packet parsing for the tc programs: Ethernet + IPv4 + the first bytes of
 * TCP, UDP, SCTP or ICMP. Every read goes through bpf_skb_load_bytes, which
 * checks bounds (and works on non-linear skbs): a packet too short for what
 * its headers announce is INVALID, never read past.
 *
 * Fragments: only the first fragment of a datagram (offset 0) carries the L4
 * header, so only it is judged; later fragments are reported as LATER and
 * follow the first one's verdict (see strait_frags in maps.h).
 */
#ifndef STRAIT_PARSE_H
#define STRAIT_PARSE_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "strait_abi.h"

/* The fixed part of an IPv4 header (options follow, per ihl). */
struct strait_ipv4_hdr {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__be16 check;
	__be32 saddr;
	__be32 daddr;
};
_Static_assert(sizeof(struct strait_ipv4_hdr) == 20, "strait_ipv4_hdr layout");

#define STRAIT_IP_MF		0x2000
#define STRAIT_IP_OFFSET	0x1fff

#define STRAIT_ICMP_ECHOREPLY		0
#define STRAIT_ICMP_DEST_UNREACH	3
#define STRAIT_ICMP_ECHO		8
#define STRAIT_ICMP_TIME_EXCEEDED	11
#define STRAIT_ICMP_PARAMETERPROB	12
#define STRAIT_ICMP_HDR_LEN		8

enum strait_frag {
	STRAIT_FRAG_NONE = 0,	/* not fragmented */
	STRAIT_FRAG_FIRST = 1,	/* offset 0, more fragments follow */
	STRAIT_FRAG_LATER = 2,	/* offset > 0: no L4 header */
};

enum strait_parse_result {
	STRAIT_PARSE_OK = 0,
	STRAIT_PARSE_NOT_IPV4 = 1,	/* ARP, IPv6, ...: not judged */
	STRAIT_PARSE_INVALID = 2,	/* cut short or malformed: dropped */
};

struct strait_pkt {
	/* The packet's 5-tuple (ports as in struct strait_ct_key). */
	struct strait_ct_key tuple;
	/* ICMP errors (has_inner): the packet the error is about. */
	struct strait_ct_key inner;
	/* The port policy judges: TCP/UDP/SCTP destination port, else 0. */
	__be16 policy_dport;
	__be16 ip_id;
	__u8 frag;		/* enum strait_frag */
	__u8 has_inner;
	__u16 pad;
};

static __always_inline int strait_has_ports(__u8 protocol)
{
	return protocol == STRAIT_IPPROTO_TCP || protocol == STRAIT_IPPROTO_UDP ||
	       protocol == STRAIT_IPPROTO_SCTP;
}

static __always_inline int strait_icmp_is_error(__u8 type)
{
	return type == STRAIT_ICMP_DEST_UNREACH || type == STRAIT_ICMP_TIME_EXCEEDED ||
	       type == STRAIT_ICMP_PARAMETERPROB;
}

/*
 * Fills t's ports from the L4 header at off (TCP/UDP/SCTP ports; ICMP echo
 * identifier, see strait_ct_key) and *icmp_type. -1 when cut short.
 */
static __always_inline int strait_load_l4(struct __sk_buff *skb, __u32 off,
					  struct strait_ct_key *t, __u8 *icmp_type)
{
	__u8 icmp[STRAIT_ICMP_HDR_LEN];
	__be16 ports[2];
	__be16 id;

	if (strait_has_ports(t->protocol)) {
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
			return -1;
		t->sport = ports[0];
		t->dport = ports[1];
		return 0;
	}
	if (t->protocol != STRAIT_IPPROTO_ICMP)
		return 0;
	if (bpf_skb_load_bytes(skb, off, icmp, sizeof(icmp)))
		return -1;
	*icmp_type = icmp[0];
	__builtin_memcpy(&id, &icmp[4], sizeof(id));
	if (icmp[0] == STRAIT_ICMP_ECHO)
		t->sport = id;
	else if (icmp[0] == STRAIT_ICMP_ECHOREPLY)
		t->dport = id;
	return 0;
}

/* Reads an IPv4 header at off; returns its length, or 0 if unusable. */
static __always_inline __u32 strait_load_ipv4(struct __sk_buff *skb, __u32 off,
					      struct strait_ipv4_hdr *ip)
{
	__u32 ihl;

	if (bpf_skb_load_bytes(skb, off, ip, sizeof(*ip)))
		return 0;
	ihl = (ip->ver_ihl & 0xf) * 4;
	if ((ip->ver_ihl >> 4) != 4 || ihl < sizeof(*ip) || bpf_ntohs(ip->tot_len) < ihl)
		return 0;
	return ihl;
}

/*
 * The packet an ICMP error quotes (its IP header and first 8 L4 bytes) at
 * off, as a tuple in the direction it was sent. Leaves has_inner 0 when the
 * quote is unusable; the error is then judged as plain ICMP.
 */
static __always_inline void strait_parse_icmp_inner(struct __sk_buff *skb, __u32 off,
						    struct strait_pkt *pkt)
{
	struct strait_ipv4_hdr ip;
	__u8 type = 0xff;
	__u32 ihl = strait_load_ipv4(skb, off, &ip);

	if (!ihl || (bpf_ntohs(ip.frag_off) & STRAIT_IP_OFFSET))
		return;
	pkt->inner.saddr = ip.saddr;
	pkt->inner.daddr = ip.daddr;
	pkt->inner.protocol = ip.protocol;
	if (strait_load_l4(skb, off + ihl, &pkt->inner, &type))
		return;
	pkt->has_inner = 1;
}

/* Parses an Ethernet frame at offset 0 of skb into *pkt. */
static __always_inline enum strait_parse_result
strait_parse(struct __sk_buff *skb, struct strait_pkt *pkt)
{
	struct strait_ipv4_hdr ip;
	__be16 eth_proto;
	__u8 icmp_type = 0xff;
	__u16 frag_off;
	__u32 ihl;

	__builtin_memset(pkt, 0, sizeof(*pkt));
	if (bpf_skb_load_bytes(skb, 12, &eth_proto, sizeof(eth_proto)))
		return STRAIT_PARSE_INVALID;
	if (eth_proto != bpf_htons(ETH_P_IP))
		return STRAIT_PARSE_NOT_IPV4;
	ihl = strait_load_ipv4(skb, ETH_HLEN, &ip);
	if (!ihl)
		return STRAIT_PARSE_INVALID;

	pkt->tuple.saddr = ip.saddr;
	pkt->tuple.daddr = ip.daddr;
	pkt->tuple.protocol = ip.protocol;
	pkt->ip_id = ip.id;
	frag_off = bpf_ntohs(ip.frag_off);
	if (frag_off & STRAIT_IP_OFFSET) {
		pkt->frag = STRAIT_FRAG_LATER;
		return STRAIT_PARSE_OK;
	}
	if (frag_off & STRAIT_IP_MF)
		pkt->frag = STRAIT_FRAG_FIRST;

	if (strait_load_l4(skb, ETH_HLEN + ihl, &pkt->tuple, &icmp_type))
		return STRAIT_PARSE_INVALID;
	if (strait_has_ports(ip.protocol))
		pkt->policy_dport = pkt->tuple.dport;
	if (ip.protocol == STRAIT_IPPROTO_ICMP && strait_icmp_is_error(icmp_type))
		strait_parse_icmp_inner(skb, ETH_HLEN + ihl + STRAIT_ICMP_HDR_LEN, pkt);
	return STRAIT_PARSE_OK;
}

#endif /* STRAIT_PARSE_H */
