// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * shunt's XDP steering program.
 *
 * A UDP datagram (over Ethernet, optionally one 802.1Q/802.1ad tag, then IPv4
 * or IPv6) whose destination port is marked in `shunt_ports` (and, with
 * SHUNT_SERVED_ONLY, whose destination address is in `shunt_served`) is
 * redirected to the AF_XDP socket registered for the receive queue it arrived
 * on. A datagram to a served port but another address -- traffic the host
 * forwards, to a pod or a VM behind it -- is the kernel's. Everything
 * else -- ARP, ICMP, TCP, other ports, IPv4 fragments, IPv6 extension headers
 * -- is passed to the kernel untouched, so the host stays reachable while the
 * server runs. A queue with no socket in `shunt_xsks` also falls back to
 * XDP_PASS (the flags argument of bpf_redirect_map), so packets are never
 * steered into the void.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_QUEUES 256

/* Counter slots: keys of `shunt_counters`. src/steer reads them by these names, through the type the
 * generated skeleton makes of this enum (sys::skel::types::shunt_counter). */
enum shunt_counter {
	SHUNT_REDIRECTED = 0,   /* handed to an AF_XDP socket */
	SHUNT_PASSED = 1,       /* not ours: left to the kernel */
	SHUNT_MALFORMED = 2,    /* claimed to be IP/UDP but headers were inconsistent */
	SHUNT_NO_SOCKET = 3,    /* our port, but no socket on this queue: passed */
	SHUNT_FILTERED = 4,     /* our port, from a source that is never served: dropped */
	SHUNT_RATE_LIMITED = 5, /* our port, over its source's rate: dropped */
	SHUNT_STAMP_FAILED = 6, /* our port, but the stamp could not be prepended (SHUNT_STAMP_HEAD): passed */
	SHUNT_NOT_SERVED_ADDR = 7, /* our port, to an address not in shunt_served (SHUNT_SERVED_ONLY): passed */
	SHUNT_COUNTER_MAX = 8,
};

/* Clang puts a type into the object's BTF only if a global, a map or a program's signature uses it, and
 * the enum above is used only for its constants. This variable carries it into the BTF, from which
 * libbpf-cargo generates the Rust type. Its section is none libbpf knows, so libbpf skips it ("skipping
 * unrecognized data section"): no map is created, nothing is loaded. */
enum shunt_counter shunt_counter_type SEC(".shunt.types");

/* Flags in `shunt_settings`; must match SETTING_* in src/steer/mod.rs. Bit 0 (stamping) moved to the
 * load-time constant shunt_stamp_method below. */
#define SHUNT_FILTER_SOURCE (1u << 1) /* drop bogus sources (see source_filtered) */
#define SHUNT_RATE_LIMIT    (1u << 2) /* per-source rate limit (shunt_rate, shunt_buckets) */
#define SHUNT_ALLOW_LIST    (1u << 3) /* serve only sources in shunt_allow */
#define SHUNT_SERVED_ONLY   (1u << 4) /* serve only destination addresses in shunt_served */

/* How redirected packets are stamped with the XDP-hook time; must match StampMethod in src/steer/mod.rs.
 * Set by user space before loading (a `const volatile`, i.e. .rodata, frozen at load): the verifier sees the
 * constant and prunes the branches it rules out, so a helper the kernel refuses (this is why: some kernels
 * refuse bpf_xdp_adjust_meta) is never called -- and never verified -- unless its method was chosen. */
#define SHUNT_STAMP_NONE 0 /* no stamp: the worker measures service time only */
#define SHUNT_STAMP_META 1 /* bpf_xdp_adjust_meta: XDP metadata in front of the packet */
#define SHUNT_STAMP_HEAD 2 /* bpf_xdp_adjust_head: the stamp prepended to the packet; the worker strips it */
const volatile __u32 shunt_stamp_method = SHUNT_STAMP_NONE;

/* Written in front of the packet when stamping is on: as XDP metadata (AF_XDP copies it into the UMEM right
 * before the packet) or as the packet's first bytes (SHUNT_STAMP_HEAD). Must match
 * src/datapath/meta.rs. The magic tells the worker the stamp is fresh. */
#define SHUNT_META_MAGIC 0x73687574u /* "shut" */
#define SHUNT_META_HW    (1u << 0)    /* hw_ns and tai_ns are valid */
struct shunt_meta {
	__u32 magic;
	__u32 flags;
	__u64 xdp_ns;     /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) at the hook */
	__u64 hw_ns;      /* the NIC's RX timestamp (its PHC clock) */
	__u64 tai_ns;     /* bpf_ktime_get_tai_ns() at the hook, to compare with hw_ns */
};

/* Device-bound programs only: the driver's RX hardware timestamp. */
extern int bpf_xdp_metadata_rx_timestamp(const struct xdp_md *ctx, __u64 *timestamp) __ksym __weak;

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} shunt_xsks SEC(".maps");

/* One byte per UDP port: non-zero means "steer to AF_XDP". */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} shunt_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SHUNT_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} shunt_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} shunt_settings SEC(".maps");

/* Source addresses as 16 bytes, IPv4 as ::ffff:a.b.c.d, for the maps below. */
struct shunt_prefix {
	__u32 prefixlen; /* bits of addr that count (an IPv4 /24 is 96 + 24) */
	__u8 addr[16];
};

/* Sources served despite nothing else (allow) or never (deny), by prefix. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct shunt_prefix);
	__type(value, __u8);
} shunt_allow SEC(".maps"), shunt_deny SEC(".maps");

/* The server's own addresses: a request "from" one is forged. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u8[16]);
	__type(value, __u8);
} shunt_own SEC(".maps");

/* The destination addresses served (16 bytes, IPv4 as ::ffff:a.b.c.d), with SHUNT_SERVED_ONLY: a datagram to a
 * served port but another address is passed to the kernel (SHUNT_NOT_SERVED_ADDR). User space keeps it in step
 * with the interface's addresses. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u8[16]);
	__type(value, __u8);
} shunt_served SEC(".maps");

/* One byte per UDP source port: non-zero means "never answer" (reflection-prone services). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} shunt_deny_sport SEC(".maps");

/* The per-source limit as a GCRA: one packet per interval_ns, up to burst at once (tolerance_ns =
 * interval_ns * (burst - 1)). */
struct shunt_rate {
	__u64 interval_ns;
	__u64 tolerance_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct shunt_rate);
} shunt_rate SEC(".maps");

/* Per source: the theoretical arrival time of its next packet (GCRA). Least recently seen sources are
 * evicted, so a flood of forged sources costs each one a fresh bucket, never memory. User space sets
 * max_entries from limits.table_size before loading. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u8[16]);
	__type(value, __u64);
} shunt_buckets SEC(".maps");

static __always_inline int count(__u32 slot, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&shunt_counters, &slot);
	if (c)
		*c += 1;
	return verdict;
}

/* Returns the UDP header if the packet is IPv4/IPv6 + UDP with consistent
 * headers, NULL if it is not ours, and sets *malformed when it claimed to be
 * IP/UDP but its headers did not hold together. On success src and dst hold
 * the source and destination addresses (IPv4 as ::ffff:a.b.c.d). */
static __always_inline struct udphdr *find_udp(void *data, void *data_end, int *malformed, __u8 src[16],
					       __u8 dst[16])
{
	struct ethhdr *eth = data;
	__u64 off = sizeof(*eth);
	__u16 proto;

	if ((void *)(eth + 1) > data_end)
		return NULL;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		/* one tag: TCI then the inner EtherType */
		__be16 *inner = data + off + 2;
		if ((void *)(inner + 1) > data_end)
			return NULL;
		proto = *inner;
		off += 4;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;
		__u32 ihl;

		if ((void *)(ip + 1) > data_end) {
			*malformed = 1;
			return NULL;
		}
		if (ip->protocol != IPPROTO_UDP)
			return NULL;
		ihl = ip->ihl * 4;
		if (ip->version != 4 || ihl < sizeof(*ip) || bpf_ntohs(ip->tot_len) < ihl + sizeof(struct udphdr)) {
			*malformed = 1;
			return NULL;
		}
		/* fragments are the kernel's to reassemble */
		if (ip->frag_off & bpf_htons(0x3fff))
			return NULL;
		__builtin_memset(src, 0, 10);
		src[10] = 0xff;
		src[11] = 0xff;
		__builtin_memcpy(src + 12, &ip->saddr, 4);
		__builtin_memset(dst, 0, 10);
		dst[10] = 0xff;
		dst[11] = 0xff;
		__builtin_memcpy(dst + 12, &ip->daddr, 4);
		off += ihl;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;

		if ((void *)(ip6 + 1) > data_end) {
			*malformed = 1;
			return NULL;
		}
		/* extension headers (and fragments) are the kernel's business */
		if (ip6->nexthdr != IPPROTO_UDP)
			return NULL;
		__builtin_memcpy(src, &ip6->saddr, 16);
		__builtin_memcpy(dst, &ip6->daddr, 16);
		off += sizeof(*ip6);
	} else {
		return NULL;
	}

	/* off is bounded: 14 + 4 + 60 at most; tell the verifier so */
	if (off > 14 + 4 + 60)
		return NULL;
	struct udphdr *udp = data + off;
	if ((void *)(udp + 1) > data_end) {
		*malformed = 1;
		return NULL;
	}
	return udp;
}

/* A source no real client has: unspecified, loopback, multicast or broadcast, this host's own addresses,
 * source port 0 or a reflection-prone service's port, a denied prefix, or outside the allow-list when there
 * is one. */
static __always_inline int source_filtered(const __u8 src[16], __u16 sport, __u32 settings)
{
	__u32 port = sport;
	__u64 hi, lo;

	if (sport == 0)
		return 1;
	__builtin_memcpy(&hi, src, 8);
	__builtin_memcpy(&lo, src + 8, 8);
	if (hi == 0 && (lo & bpf_cpu_to_be64(0xffffffff00000000ULL)) == bpf_cpu_to_be64(0x0000ffff00000000ULL)) {
		/* IPv4: 0/8 "this network", 127/8 loopback, 224/4 multicast, 240/4 and 255.255.255.255 */
		if (src[12] == 0 || src[12] == 127 || src[12] >= 224)
			return 1;
	} else {
		/* IPv6: :: and ::1, ff00::/8 multicast */
		if (hi == 0 && (lo == 0 || lo == bpf_cpu_to_be64(1)))
			return 1;
		if (src[0] == 0xff)
			return 1;
	}
	if (bpf_map_lookup_elem(&shunt_own, src))
		return 1;
	__u8 *bad_port = bpf_map_lookup_elem(&shunt_deny_sport, &port);
	if (bad_port && *bad_port)
		return 1;
	struct shunt_prefix key = {.prefixlen = 128};
	__builtin_memcpy(key.addr, src, 16);
	if (bpf_map_lookup_elem(&shunt_deny, &key))
		return 1;
	if ((settings & SHUNT_ALLOW_LIST) && !bpf_map_lookup_elem(&shunt_allow, &key))
		return 1;
	return 0;
}

/* GCRA per source: 1 when this packet is over its source's rate. Concurrent updates for one source from
 * several CPUs are not atomic: a few packets more than the limit may pass when one source's traffic is
 * spread over queues. */
static __always_inline int rate_limited(const __u8 src[16])
{
	__u32 zero = 0;
	struct shunt_rate *rate = bpf_map_lookup_elem(&shunt_rate, &zero);
	if (!rate || rate->interval_ns == 0)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 *tat = bpf_map_lookup_elem(&shunt_buckets, src);
	if (!tat) {
		__u64 next = now + rate->interval_ns;
		bpf_map_update_elem(&shunt_buckets, src, &next, BPF_ANY);
		return 0;
	}
	__u64 t = *tat > now ? *tat : now;
	if (t - now > rate->tolerance_ns)
		return 1;
	*tat = t + rate->interval_ns;
	return 0;
}

/* hw_stamp is a compile-time constant, not a load-time one: the verifier refuses a call to the metadata kfunc
 * anywhere in a program that is not device-bound, reachable or not, so the plain program must not contain it. */
static __always_inline int steer(struct xdp_md *ctx, const int hw_stamp)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int malformed = 0;
	__u8 src[16] = {};
	__u8 dst[16] = {};
	struct udphdr *udp = find_udp(data, data_end, &malformed, src, dst);

	if (!udp)
		return count(malformed ? SHUNT_MALFORMED : SHUNT_PASSED, XDP_PASS);

	__u32 port = bpf_ntohs(udp->dest);
	__u8 *wanted = bpf_map_lookup_elem(&shunt_ports, &port);
	if (!wanted || !*wanted)
		return count(SHUNT_PASSED, XDP_PASS);

	__u32 zero = 0;
	__u32 *settings = bpf_map_lookup_elem(&shunt_settings, &zero);
	__u32 bits = settings ? *settings : 0;
	/* Our port, but not our address: forwarded traffic (to a pod, a VM, a host behind this one) is the kernel's. */
	if ((bits & SHUNT_SERVED_ONLY) && !bpf_map_lookup_elem(&shunt_served, dst))
		return count(SHUNT_NOT_SERVED_ADDR, XDP_PASS);
	/* Abuse never reaches user space, nor the kernel's stack. */
	if ((bits & SHUNT_FILTER_SOURCE) && source_filtered(src, bpf_ntohs(udp->source), bits))
		return count(SHUNT_FILTERED, XDP_DROP);
	if ((bits & SHUNT_RATE_LIMIT) && rate_limited(src))
		return count(SHUNT_RATE_LIMITED, XDP_DROP);

	if (shunt_stamp_method == SHUNT_STAMP_META) {
		__u64 hw_ns = 0;
		int have_hw = hw_stamp && bpf_xdp_metadata_rx_timestamp(ctx, &hw_ns) == 0 && hw_ns != 0;
		/* Best effort: a driver without metadata support keeps the packet
		 * unstamped and the worker sees no metadata. */
		if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct shunt_meta)) == 0) {
			struct shunt_meta *meta = (void *)(long)ctx->data_meta;
			if ((void *)(meta + 1) <= (void *)(long)ctx->data) {
				meta->magic = SHUNT_META_MAGIC;
				meta->flags = have_hw ? SHUNT_META_HW : 0;
				meta->xdp_ns = bpf_ktime_get_ns();
				meta->hw_ns = hw_ns;
				meta->tai_ns = have_hw ? bpf_ktime_get_tai_ns() : 0;
			}
		}
	} else if (shunt_stamp_method == SHUNT_STAMP_HEAD) {
		__u64 hw_ns = 0;
		int have_hw = hw_stamp && bpf_xdp_metadata_rx_timestamp(ctx, &hw_ns) == 0 && hw_ns != 0;
		/* Every packet the worker gets then starts with the stamp, which it strips. Every driver leaves
		 * XDP_PACKET_HEADROOM (256 bytes) in front of the packet, so this cannot fail in practice; if it
		 * does, the packet is the kernel's rather than a worker's that would misread it. */
		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct shunt_meta)) != 0)
			return count(SHUNT_STAMP_FAILED, XDP_PASS);
		struct shunt_meta *meta = (void *)(long)ctx->data;
		if ((void *)(meta + 1) > (void *)(long)ctx->data_end) {
			/* cannot happen after a successful adjust_head; the verifier wants the check */
			return count(SHUNT_STAMP_FAILED, XDP_DROP);
		}
		meta->magic = SHUNT_META_MAGIC;
		meta->flags = have_hw ? SHUNT_META_HW : 0;
		meta->xdp_ns = bpf_ktime_get_ns();
		meta->hw_ns = hw_ns;
		meta->tai_ns = have_hw ? bpf_ktime_get_tai_ns() : 0;
		int verdict = bpf_redirect_map(&shunt_xsks, ctx->rx_queue_index, XDP_PASS);
		if (verdict == XDP_REDIRECT)
			return count(SHUNT_REDIRECTED, verdict);
		/* No socket on this queue: the kernel gets the packet as it came. */
		bpf_xdp_adjust_head(ctx, (int)sizeof(struct shunt_meta));
		return count(SHUNT_NO_SOCKET, XDP_PASS);
	}

	int verdict = bpf_redirect_map(&shunt_xsks, ctx->rx_queue_index, XDP_PASS);
	if (verdict == XDP_REDIRECT)
		return count(SHUNT_REDIRECTED, verdict);
	return count(SHUNT_NO_SOCKET, verdict);
}

/* The program for any attach mode. */
SEC("xdp")
int shunt_steer(struct xdp_md *ctx)
{
	return steer(ctx, 0);
}

/* The same, loaded bound to one device (native mode only) so that it may ask
 * the driver for the packet's RX hardware timestamp (a kfunc only device-bound programs
 * may call). */
SEC("xdp")
int shunt_steer_hw(struct xdp_md *ctx)
{
	return steer(ctx, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
