// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * An in-kernel UDP responder, for comparison only: the "old answer" shunt is measured against. A UDP datagram
 * to the configured port (IPv4 with any header length, or IPv6 without extension headers, optionally behind
 * one VLAN tag) is answered from the XDP hook with XDP_TX: MAC, IP addresses and ports swapped, payload
 * echoed. With `sockperf` set it also clears sockperf's CLIENT flag and drops messages that did not ask for a
 * reply, so `sockperf ping-pong` works against it. Everything else is passed to the kernel.
 *
 * Checksums: swapping addresses and ports leaves the UDP checksum valid; clearing the flag is folded in
 * incrementally (RFC 1624). The request's checksum must therefore be complete: over veth a kernel client has
 * to turn TX checksum offload off (as for dpdk-testpmd), which the comparison plan does.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct reflect_config {
	__u32 port;      /* host order */
	__u32 sockperf;  /* non-zero: sockperf protocol */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct reflect_config);
} reflect_config SEC(".maps");

/* 0: answered, 1: dropped (sockperf message without PONG_REQUEST), 2: passed */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} reflect_counters SEC(".maps");

static __always_inline int count(__u32 slot, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&reflect_counters, &slot);
	if (c)
		*c += 1;
	return verdict;
}

static __always_inline void swap_bytes(__u8 *a, __u8 *b, int n)
{
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if (i < n) {
			__u8 t = a[i];
			a[i] = b[i];
			b[i] = t;
		}
	}
}

SEC("xdp")
int reflect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct reflect_config *cfg = bpf_map_lookup_elem(&reflect_config, &zero);
	struct ethhdr *eth = data;
	__u64 off = sizeof(*eth);
	__u16 proto;

	if (!cfg || (void *)(eth + 1) > data_end)
		return count(2, XDP_PASS);
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q)) {
		__be16 *inner = data + off + 2;
		if ((void *)(inner + 1) > data_end)
			return count(2, XDP_PASS);
		proto = *inner;
		off += 4;
	}

	struct iphdr *ip4 = 0;
	struct ipv6hdr *ip6 = 0;
	if (proto == bpf_htons(ETH_P_IP)) {
		ip4 = data + off;
		if ((void *)(ip4 + 1) > data_end || ip4->protocol != IPPROTO_UDP || ip4->ihl < 5 ||
		    (ip4->frag_off & bpf_htons(0x3fff)))
			return count(2, XDP_PASS);
		off += ip4->ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		ip6 = data + off;
		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_UDP)
			return count(2, XDP_PASS);
		off += sizeof(*ip6);
	} else {
		return count(2, XDP_PASS);
	}
	if (off > 14 + 4 + 60)
		return count(2, XDP_PASS);
	struct udphdr *udp = data + off;
	if ((void *)(udp + 1) > data_end || udp->dest != bpf_htons(cfg->port))
		return count(2, XDP_PASS);

	if (cfg->sockperf) {
		/* u64 sequence, then u16 flags: CLIENT = 1, PONG_REQUEST = 2 */
		__be16 *flags = (void *)(udp + 1) + 8;
		if ((void *)(flags + 1) > data_end)
			return count(2, XDP_PASS);
		__u16 f = bpf_ntohs(*flags);
		if (!(f & 1))
			return count(2, XDP_PASS);
		if (!(f & 2))
			return count(1, XDP_DROP);
		__be16 old = *flags;
		__be16 new = bpf_htons(f & ~1);
		*flags = new;
		if (udp->check) {
			/* RFC 1624: HC' = ~(~HC + ~m + m') */
			__u32 sum = (__u16)~udp->check + (__u16)~old + (__u16)new;
			sum = (sum & 0xffff) + (sum >> 16);
			sum = (sum & 0xffff) + (sum >> 16);
			__u16 check = ~sum;
			udp->check = check ? check : 0xffff;
		}
	}

	swap_bytes(eth->h_dest, eth->h_source, 6);
	if (ip4) {
		__be32 a = ip4->saddr;
		ip4->saddr = ip4->daddr;
		ip4->daddr = a;
	} else if (ip6) {
		swap_bytes((__u8 *)&ip6->saddr, (__u8 *)&ip6->daddr, 16);
	}
	__be16 p = udp->source;
	udp->source = udp->dest;
	udp->dest = p;
	return count(0, XDP_TX);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
