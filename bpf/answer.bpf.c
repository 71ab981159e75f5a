// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * shunt's in-kernel server: "the server inside the kernel" that the AF_XDP datapath is compared with.
 *
 * A UDP datagram to a port marked in `answer_ports` is answered from the XDP hook itself with XDP_TX, in the
 * frame it arrived in: MAC addresses, IP addresses and UDP ports swapped, the IP header written afresh as the
 * user-space path writes it (src/packet/reply.rs says why): IPv4 without options, TOS 0 (DSCP 0, ECN
 * not-ECT), ID 0 with DF, TTL 64, its checksum recomputed; IPv6 with traffic class 0, flow label 0, hop
 * limit 64; and a full UDP checksum. Nothing reaches user space.
 *
 * IPv4 options are stripped, not left to the kernel: the request is still ours to answer. Rather than move
 * the datagram down over them (up to 1480 bytes, a bounded loop of its own), the headers in front of them --
 * Ethernet, the tag, the 20 fixed bytes of IPv4, at most 38 bytes -- move up by the options' length and
 * bpf_xdp_adjust_head drops what is left in front: the same bytes, a shorter frame. TTL and DSCP are fixed
 * (64 and 0), the defaults of `packet.reply_ttl` / `packet.reply_dscp`; the control plane refuses other values
 * in this mode. A reply is never longer than its request, so it never exceeds the MTU the request came in
 * under.
 *
 * What it reads: Ethernet, optionally one 802.1Q or 802.1ad tag (kept in the reply), then IPv4 (options
 * allowed, stripped from the reply) or IPv6 without extension headers, then UDP. Everything else -- ARP, ICMP, TCP, other ports, IPv4
 * fragments, IPv6 extension headers, stacked tags -- is passed to the kernel untouched (`passed`), so the
 * host stays reachable. A frame that claims to be IP/UDP but whose headers do not hold together (truncated,
 * IHL below 5, wrong IP version, total / payload length below the headers or beyond the frame, UDP length
 * below 8 or beyond the IP payload; for a served port also a wrong IPv4 header checksum) is passed to the
 * kernel, which drops it (`malformed`). These are the checks of the user-space path (src/packet/parse.rs),
 * so both modes answer exactly the same requests with exactly the same replies (tests/in_kernel.rs compares
 * them byte for byte with `shunt::handler::respond`).
 *
 * For a served port, in order (after the checks above):
 *   - with answer_settings.served_only, a destination address not in `answer_served` (traffic the host
 *     forwards, to a pod or a VM) is passed to the kernel (`other_address`);
 *   - a UDP payload longer than ANSWER_MAX_PAYLOAD cannot be checksummed within the verifier's bounds: passed
 *     to the kernel (`too_long`);
 *   - the request's UDP checksum must verify, be zero over IPv4 (none computed), or be exactly the folded
 *     pseudo-header sum a sender with TX checksum offload leaves (what arrives over veth); anything else is
 *     a datagram corrupted on the way: dropped (`bad_checksum`);
 *   - the handler chosen in `answer_settings` decides: `echo` answers every request with its payload;
 *     `sockperf` answers only messages of at least 14 bytes whose big-endian u16 flags at payload offset 8
 *     carry CLIENT (0x0001) and PONG_REQUEST (0x0002), with CLIENT cleared, and drops the rest
 *     (`dropped_by_handler`);
 *   - the reply is written and sent back out of the interface it came in on (`answered`).
 * Every frame the program sees is counted in exactly one slot of `answer_counters`.
 *
 * The UDP checksum is summed with bpf_csum_diff over the datagram in 256-byte chunks (a bounded loop) and
 * smaller power-of-two chunks for the rest (two global functions, so that the verifier checks them once),
 * in memory byte order (RFC 1071 sums are byte-order independent), once: the request is verified with the
 * sum, and the reply's checksum derived from it (the pseudo-header sum does not change when source and
 * destination swap, nor the segment's when the ports swap; the sockperf flag change is folded in as in
 * RFC 1624). Before summing, the frame is cut where the datagram ends (Ethernet padding, bytes past the UDP
 * length), as the user-space path's reply is.
 *
 * There is no in-server latency: the time from the hook to the frame leaving with XDP_TX is not observable
 * from inside the program, so none is recorded.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* The largest UDP payload answered: a 1500-byte IPv4 packet without options. Must match
 * MAX_PAYLOAD in src/steer/answer.rs. */
#define ANSWER_MAX_PAYLOAD 1472
#define ANSWER_MAX_SEGMENT (ANSWER_MAX_PAYLOAD + 8)
/* bpf_csum_diff chunks of CHUNK bytes; CHUNKS of them cover any segment answered, with less than CHUNK
 * left for the tail. */
#define CHUNK 256
#define CHUNKS (ANSWER_MAX_SEGMENT / CHUNK)
_Static_assert(ANSWER_MAX_SEGMENT - CHUNKS * CHUNK < CHUNK, "the tail must be shorter than a chunk");

/* Ethernet + one tag + the longest IPv4 header: the furthest a UDP header starts. */
#define MAX_UDP_OFFSET (14 + 4 + 60)

/* Counter slots: keys of `answer_counters`. src/steer/answer.rs reads them by these names, through the type
 * the generated skeleton makes of this enum. */
enum answer_counter {
	ANSWER_ANSWERED = 0,           /* answered with XDP_TX */
	ANSWER_PASSED = 1,             /* not ours: left to the kernel */
	ANSWER_MALFORMED = 2,          /* claimed to be IP/UDP, headers inconsistent: passed, the kernel drops it */
	ANSWER_BAD_CHECKSUM = 3,       /* served port, UDP checksum wrong: dropped */
	ANSWER_DROPPED_BY_HANDLER = 4, /* served port, the handler chose not to answer: dropped */
	ANSWER_TOO_LONG = 5,           /* served port, payload over ANSWER_MAX_PAYLOAD: passed */
	ANSWER_OTHER_ADDRESS = 6,      /* served port, destination address not in answer_served: passed */
	ANSWER_COUNTER_MAX = 7,
};

/* The handlers, values of answer_settings.handler. */
enum answer_handler {
	ANSWER_ECHO = 0,
	ANSWER_SOCKPERF = 1,
};

struct answer_settings {
	__u32 handler;     /* enum answer_handler */
	__u32 served_only; /* non-zero: answer only destination addresses in answer_served */
};

/* Clang puts a type into the object's BTF only if a global, a map or a program's signature uses it; these
 * enums are used only for their constants. The variables carry them into the BTF, from which libbpf-cargo
 * generates the Rust types. Their section is none libbpf knows, so libbpf skips it: no map is created. */
enum answer_counter answer_counter_type SEC(".answer.types");
enum answer_handler answer_handler_type SEC(".answer.types");

/* One byte per UDP port: non-zero means "answer it here". */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} answer_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ANSWER_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} answer_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct answer_settings);
} answer_settings SEC(".maps");

/* The destination addresses answered when answer_settings.served_only is set: 16 bytes, IPv4 as
 * ::ffff:a.b.c.d (as shunt_served in shunt.bpf.c). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u8[16]);
	__type(value, __u8);
} answer_served SEC(".maps");

#define SOCKPERF_HEADER_LEN 14
#define SOCKPERF_FLAGS_AT   8
#define SOCKPERF_CLIENT       0x0001
#define SOCKPERF_PONG_REQUEST 0x0002
#define REPLY_TTL 64
#define IP_DF 0x4000

static __always_inline int count(__u32 slot, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&answer_counters, &slot);
	if (c)
		*c += 1;
	return verdict;
}

/* Folds a one's-complement running sum into 16 bits (not complemented); non-zero for a non-zero sum. */
static __always_inline __u16 fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/* The sum of an IPv4 header of `words` 32-bit words (5..15), as loaded from memory. */
static __always_inline __u64 ipv4_header_sum(struct iphdr *ip, __u32 words, void *data_end)
{
	__u32 *w = (__u32 *)ip;
	__u64 sum = 0;

	for (int i = 0; i < 15; i++) {
		if (i >= words || (void *)(w + i + 1) > data_end)
			break;
		sum += w[i];
	}
	return sum;
}

/* Moves the first `l3` (14 or 18) bytes of the frame -- Ethernet and its tag -- and then `ip`, the reply's IPv4
 * header without options, up by `opts` bytes (4..40: the request's options) and drops the bytes left in front,
 * so that the IPv4 header ends where the UDP header starts. Returns 0, or -1 if the frame cannot be adjusted
 * (it is then to be dropped: its headers are half written). */
static __always_inline int strip_ipv4_options(struct xdp_md *ctx, __u32 l3, __u32 opts, struct iphdr *ip)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 link[18];

	if (data + sizeof(link) > data_end)
		return -1;
	__builtin_memcpy(link, data, sizeof(link));
	if (bpf_xdp_adjust_head(ctx, (int)opts))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (l3 == 14) {
		if (data + 14 + sizeof(*ip) > data_end)
			return -1;
		__builtin_memcpy(data, link, 14);
		__builtin_memcpy(data + 14, ip, sizeof(*ip));
	} else {
		if (data + 18 + sizeof(*ip) > data_end)
			return -1;
		__builtin_memcpy(data, link, 18);
		__builtin_memcpy(data + 18, ip, sizeof(*ip));
	}
	return 0;
}

/* The folded sum of the frame's bytes from `off` to its end, fewer than CHUNK of them, as 16-bit words in
 * memory order (a trailing odd byte padded with zero); -1 if there are CHUNK or more.
 *
 * This and segment_sum are global functions: the verifier checks each once, on its own, instead of once
 * for every way the caller can reach it. The power-of-two chunks below make 2^8 paths, and the chunk loop
 * of segment_sum multiplies them; inlined, they would also multiply everything after them in the program. */
__noinline int tail_sum(struct xdp_md *ctx, __u64 off)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 sum = 0;

	if (off > 4096)
		return -1;
	void *p = data + off;
#define TAIL(n)                                                         \
	if (p + (n) <= data_end) {                                      \
		sum += (__u32)bpf_csum_diff(NULL, 0, p, (n), 0);        \
		p += (n);                                               \
	}
	TAIL(128)
	TAIL(64)
	TAIL(32)
	TAIL(16)
	TAIL(8)
	TAIL(4)
#undef TAIL
	if (p + 2 <= data_end) {
		sum += *(__u16 *)p;
		p += 2;
	}
	if (p + 1 <= data_end) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
		sum += *(__u8 *)p;
#else
		sum += (__u32)*(__u8 *)p << 8;
#endif
		p += 1;
	}
	if (p != data_end)
		return -1;
	return fold(sum);
}

/* The folded sum of the frame's bytes from `off` (a UDP header) to its end, at most CHUNKS * CHUNK + CHUNK - 1
 * of them; -1 if there are more. */
__noinline int segment_sum(struct xdp_md *ctx, __u64 off)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 sum = 0;

	if (off > MAX_UDP_OFFSET)
		return -1;
	for (int i = 0; i < CHUNKS; i++) {
		void *p = data + off;
		if (p + CHUNK > data_end)
			break;
		sum += (__u32)bpf_csum_diff(NULL, 0, p, CHUNK, 0);
		off += CHUNK;
	}
	int tail = tail_sum(ctx, off);
	if (tail < 0)
		return -1;
	return fold(sum + tail);
}

static __always_inline void swap6(__u8 *a, __u8 *b)
{
	__u8 t[6];
	__builtin_memcpy(t, a, 6);
	__builtin_memcpy(a, b, 6);
	__builtin_memcpy(b, t, 6);
}

SEC("xdp")
int answer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 l3 = sizeof(*eth);
	__u32 udp_off, ip_payload, ihl = 0;
	int v4;
	__u16 proto;

	if ((void *)(eth + 1) > data_end)
		return count(ANSWER_PASSED, XDP_PASS);
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		/* one tag: TCI then the inner EtherType */
		__be16 *inner = data + l3 + 2;
		if ((void *)(inner + 1) > data_end)
			return count(ANSWER_PASSED, XDP_PASS);
		proto = *inner;
		l3 += 4;
	}
	__u32 frame_len = data_end - data;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + l3;
		__u32 total;

		if ((void *)(ip + 1) > data_end)
			return count(ANSWER_MALFORMED, XDP_PASS);
		if (ip->protocol != IPPROTO_UDP)
			return count(ANSWER_PASSED, XDP_PASS);
		ihl = ip->ihl * 4;
		total = bpf_ntohs(ip->tot_len);
		if (ip->version != 4 || ihl < sizeof(*ip) || total < ihl + sizeof(struct udphdr) ||
		    l3 + total > frame_len)
			return count(ANSWER_MALFORMED, XDP_PASS);
		/* fragments are the kernel's to reassemble */
		if (ip->frag_off & bpf_htons(0x3fff))
			return count(ANSWER_PASSED, XDP_PASS);
		udp_off = l3 + ihl;
		ip_payload = total - ihl;
		v4 = 1;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + l3;

		if ((void *)(ip6 + 1) > data_end)
			return count(ANSWER_MALFORMED, XDP_PASS);
		if (ip6->version != 6)
			return count(ANSWER_MALFORMED, XDP_PASS);
		/* extension headers (and fragments) are the kernel's business */
		if (ip6->nexthdr != IPPROTO_UDP)
			return count(ANSWER_PASSED, XDP_PASS);
		ip_payload = bpf_ntohs(ip6->payload_len);
		if (ip_payload < sizeof(struct udphdr) || l3 + sizeof(*ip6) + ip_payload > frame_len)
			return count(ANSWER_MALFORMED, XDP_PASS);
		udp_off = l3 + sizeof(*ip6);
		v4 = 0;
	} else {
		return count(ANSWER_PASSED, XDP_PASS);
	}

	/* udp_off is at most 14 + 4 + 60; tell the verifier so */
	if (udp_off > MAX_UDP_OFFSET)
		return count(ANSWER_MALFORMED, XDP_PASS);
	struct udphdr *udp = data + udp_off;
	if ((void *)(udp + 1) > data_end)
		return count(ANSWER_MALFORMED, XDP_PASS);
	__u32 udp_len = bpf_ntohs(udp->len);
	if (udp_len < sizeof(*udp) || udp_len > ip_payload)
		return count(ANSWER_MALFORMED, XDP_PASS);

	__u32 port = bpf_ntohs(udp->dest);
	__u8 *wanted = bpf_map_lookup_elem(&answer_ports, &port);
	if (!wanted || !*wanted)
		return count(ANSWER_PASSED, XDP_PASS);

	__u32 first = 0;
	struct answer_settings *policy = bpf_map_lookup_elem(&answer_settings, &first);
	if (policy && policy->served_only) {
		__u8 dst[16] = {};
		if (v4) {
			struct iphdr *ip = data + l3;
			if ((void *)(ip + 1) > data_end)
				return count(ANSWER_MALFORMED, XDP_PASS);
			dst[10] = 0xff;
			dst[11] = 0xff;
			__builtin_memcpy(dst + 12, &ip->daddr, 4);
		} else {
			struct ipv6hdr *ip6 = data + l3;
			if ((void *)(ip6 + 1) > data_end)
				return count(ANSWER_MALFORMED, XDP_PASS);
			__builtin_memcpy(dst, &ip6->daddr, 16);
		}
		if (!bpf_map_lookup_elem(&answer_served, dst))
			return count(ANSWER_OTHER_ADDRESS, XDP_PASS);
	}

	if (v4) {
		struct iphdr *ip = data + l3;
		if ((void *)(ip + 1) > data_end)
			return count(ANSWER_MALFORMED, XDP_PASS);
		if (fold(ipv4_header_sum(ip, ihl / 4, data_end)) != 0xffff)
			return count(ANSWER_MALFORMED, XDP_PASS);
	}
	if (udp_len > ANSWER_MAX_SEGMENT)
		return count(ANSWER_TOO_LONG, XDP_PASS);

	/* From here on the frame ends where the UDP datagram does: Ethernet padding and bytes past the UDP
	 * length are cut, so that the checksum below covers exactly the datagram and the reply carries nothing
	 * else. */
	__u32 end = udp_off + udp_len;
	if (end < frame_len) {
		/* cannot fail: the frame keeps at least its headers */
		if (bpf_xdp_adjust_tail(ctx, -(int)(frame_len - end)))
			return count(ANSWER_PASSED, XDP_PASS);
	}

	/* The datagram's sum, its checksum field included. */
	int summed = segment_sum(ctx, udp_off);
	if (summed < 0) /* cannot happen: the datagram is at most ANSWER_MAX_SEGMENT bytes */
		return count(ANSWER_TOO_LONG, XDP_PASS);
	__u64 segment = summed;

	/* bpf_xdp_adjust_tail invalidated every packet pointer: derive them again, from offsets the compiler may
	 * not fold into the bounds it already knows, so that the verifier sees the checks. */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	barrier_var(udp_off);
	barrier_var(l3);
	if (udp_off > MAX_UDP_OFFSET || l3 > 18)
		return count(ANSWER_PASSED, XDP_PASS);
	eth = data;
	udp = data + udp_off;
	if ((void *)(eth + 1) > data_end || (void *)(udp + 1) > data_end)
		return count(ANSWER_PASSED, XDP_PASS);

	/* The pseudo-header's sum: addresses, protocol, UDP length (memory order throughout). */
	__u64 pseudo = bpf_htons(IPPROTO_UDP) + (__u64)udp->len;
	struct iphdr *ip4 = NULL;
	struct ipv6hdr *ip6 = NULL;
	if (v4) {
		ip4 = data + l3;
		if ((void *)(ip4 + 1) > data_end)
			return count(ANSWER_PASSED, XDP_PASS);
		pseudo += (__u64)ip4->saddr + ip4->daddr;
	} else {
		ip6 = data + l3;
		if ((void *)(ip6 + 1) > data_end)
			return count(ANSWER_PASSED, XDP_PASS);
#pragma unroll
		for (int i = 0; i < 4; i++)
			pseudo += (__u64)ip6->saddr.in6_u.u6_addr32[i] + ip6->daddr.in6_u.u6_addr32[i];
	}

	/* The request's checksum: correct, absent (IPv4 only), or the pseudo-header sum alone. */
	__u16 check = udp->check;
	int ok;
	if (check == 0)
		ok = v4;
	else
		ok = fold(pseudo + segment) == 0xffff || check == fold(pseudo);
	if (!ok)
		return count(ANSWER_BAD_CHECKSUM, XDP_DROP);
	/* The segment's sum without its checksum field, which the reply's replaces. */
	segment += (__u16)~check;

	__u32 zero = 0;
	struct answer_settings *settings = bpf_map_lookup_elem(&answer_settings, &zero);
	__u32 handler = settings ? settings->handler : ANSWER_ECHO;
	if (handler == ANSWER_SOCKPERF) {
		__be16 *flags = (void *)(udp + 1) + SOCKPERF_FLAGS_AT;
		if (udp_len < sizeof(*udp) + SOCKPERF_HEADER_LEN || (void *)(flags + 1) > data_end)
			return count(ANSWER_DROPPED_BY_HANDLER, XDP_DROP);
		__u16 f = bpf_ntohs(*flags);
		if (!(f & SOCKPERF_CLIENT) || !(f & SOCKPERF_PONG_REQUEST))
			return count(ANSWER_DROPPED_BY_HANDLER, XDP_DROP);
		__u16 old = *flags;
		__u16 new = bpf_htons(f & ~SOCKPERF_CLIENT);
		*flags = new;
		/* RFC 1624: the sum loses the old word and gains the new one */
		segment += (__u16)~old + (__u32)new;
	} else if (handler != ANSWER_ECHO) {
		return count(ANSWER_DROPPED_BY_HANDLER, XDP_DROP);
	}

	/* The reply. Swapping source and destination changes neither the pseudo-header's sum nor the
	 * segment's. */
	swap6(eth->h_dest, eth->h_source);
	__be16 sport = udp->source;
	udp->source = udp->dest;
	udp->dest = sport;
	__u16 sum = ~fold(pseudo + segment);
	udp->check = sum ? sum : 0xffff;
	if (ip4) {
		/* The reply's IPv4 header, built on the stack: no options, nothing of the request's but the
		 * addresses (swapped) and the protocol. */
		struct iphdr h = {};
		h.version = 4;
		h.ihl = sizeof(h) / 4;
		h.tot_len = bpf_htons(sizeof(h) + udp_len);
		h.frag_off = bpf_htons(IP_DF);
		h.ttl = REPLY_TTL;
		h.protocol = IPPROTO_UDP;
		h.saddr = ip4->daddr;
		h.daddr = ip4->saddr;
		__u32 *w = (__u32 *)&h;
		h.check = ~fold((__u64)w[0] + w[1] + w[2] + w[3] + w[4]);
		if (ihl > sizeof(h)) {
			/* cannot fail: the frame holds at least the headers and moves only within them;
			 * if it did, the half-written frame is dropped, counted with the malformed */
			if (strip_ipv4_options(ctx, l3, ihl - sizeof(h), &h))
				return count(ANSWER_MALFORMED, XDP_DROP);
		} else {
			__builtin_memcpy(ip4, &h, sizeof(h));
		}
	} else if (ip6) {
		struct in6_addr a = ip6->saddr;
		ip6->saddr = ip6->daddr;
		ip6->daddr = a;
		/* version 6, traffic class 0 (DSCP 0, ECN not-ECT), flow label 0 */
		*(__be32 *)ip6 = bpf_htonl(0x60000000);
		ip6->hop_limit = REPLY_TTL;
		ip6->payload_len = udp->len;
	}
	return count(ANSWER_ANSWERED, XDP_TX);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
