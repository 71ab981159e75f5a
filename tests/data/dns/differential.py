#!/usr/bin/python3
"""Differential test of shunt's DNS example against Knot DNS (run by tests/dns.rs in the lab's client namespace).

Sends the same queries, over UDP, to both servers serving the same zones, and requires the same rcode, AA and TC
flags, the same answer section (RRsets in the same order, records in any order within an RRset), the same
authority section and the same additional section (in any order; the OPT compared by size, version, DO and
extended rcode). Queries: every name of the zones (empty non-terminals included) with every type, names that do
not exist, names below the delegations, wildcard matches, 300 names made of the zones' labels at random (seeded),
case variants, EDNS off and on at several sizes, the DO bit, BADVERS, and raw malformed messages. The cases where the example deliberately answers differently from Knot
are in DIFFERENCES, with the reason and what the example must answer instead.

Usage: differential.py SHUNT_ADDR SHUNT_PORT KNOT_ADDR KNOT_PORT ZONE_DIR
Prints the number of queries and every mismatch; exits 1 if there is one.
"""

import os
import random
import socket
import struct
import sys

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.zone

TIMEOUT = 2.0
TRIES = 3

# Raw messages on which the example deliberately differs from Knot 3.2: name -> (reason, the example's expected
# reply as (rcode, QDCOUNT) or None for no reply).
DIFFERENCES = {
    "QDCOUNT 2": ("Knot drops it; RFC 1035 has one question per query, and a 12-byte FORMERR amplifies nothing "
                  "and tells the client why", (1, 0)),
    "question cut short": ("Knot drops it; the example answers FORMERR, header only (no larger than the query)",
                           (1, 0)),
    "compressed question name": ("Knot drops it; the example answers FORMERR, header only", (1, 0)),
    "QDCOUNT 0 with an OPT": ("Knot echoes the OPT in its FORMERR; the example's FORMERR for a missing question is "
                              "the header alone", (1, 0)),
    "OPT owned by a non-root name": ("Knot accepts it; RFC 6891 6.1.1 requires the root, the example answers "
                                     "FORMERR", (1, 1)),
    "opcode NOTIFY": ("Knot answers NOTAUTH (no notify ACL); the example answers NOTIMP for every opcode but "
                      "QUERY", (4, 1)),
    "opcode UPDATE": ("Knot answers FORMERR (no update ACL); the example answers NOTIMP", (4, 1)),
    "IXFR over UDP": ("Knot answers NOTAUTH (no transfer ACL); the example has no transfers and answers NOTIMP as "
                      "Knot does for AXFR", (4, 1)),
}


def header(qid, flags=0x0100, qd=1, an=0, ns=0, ar=0):
    return struct.pack(">HHHHHH", qid, flags, qd, an, ns, ar)


def question(name, qtype=1, qclass=1):
    wire = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".") if label) + b"\0"
    return wire + struct.pack(">HH", qtype, qclass)


OPT = b"\0" + struct.pack(">HHIH", 41, 1232, 0, 0)


def raw_cases():
    """Raw messages (name, bytes): malformed ones, odd flags and opcodes."""
    q = question("example.test")
    return [
        ("QR set", header(1, flags=0x8100) + q),
        ("opcode STATUS", header(2, flags=0x1100) + q),
        ("opcode NOTIFY", header(3, flags=0x2100) + q),
        ("opcode UPDATE", header(4, flags=0x2900) + q),
        ("QDCOUNT 0", header(5, qd=0)),
        ("QDCOUNT 0 with an OPT", header(6, qd=0, ar=1) + OPT),
        ("QDCOUNT 2", header(7, qd=2) + q + q),
        ("question cut short", header(8) + q[:-2]),
        ("shorter than a header", header(9)[:10]),
        ("two OPTs", header(10, ar=2) + q + OPT + OPT),
        ("OPT in the answer section", header(11, an=1) + q + OPT),
        ("OPT in the authority section", header(12, ns=1) + q + OPT),
        ("OPT owned by a non-root name", header(13, ar=1) + q + b"\x01a\0" + OPT[1:]),
        ("bytes after the question", header(14) + q + b"xyz"),
        ("ARCOUNT 1, no record", header(15, ar=1) + q),
        ("OPT RDLENGTH past the end", header(16, ar=1) + q + OPT[:-2] + b"\0\x05"),
        ("EDNS option cut short", header(17, ar=1) + q + OPT[:-2] + b"\0\x03\0\x0a\0"),
        ("AA TC AD CD Z set in the query", header(18, flags=0x0100 | 0x0400 | 0x0200 | 0x0070) + q),
        ("RD clear", header(19, flags=0) + q),
        ("compressed question name", header(20) + b"\xc0\x0c" + struct.pack(">HH", 1, 1)),
        ("QTYPE 0", header(21) + question("example.test", 0)),
        ("AXFR over UDP", header(22) + question("example.test", 252)),
        ("IXFR over UDP", header(23) + question("example.test", 251)),
        ("QCLASS ANY", header(24) + question("example.test", 1, 255)),
        ("QCLASS CH", header(25) + question("example.test", 1, 3)),
        ("QCLASS NONE", header(26) + question("example.test", 1, 254)),
        ("a record other than OPT in the additional section",
         header(27, ar=1) + q + b"\0" + struct.pack(">HHIH", 1, 1, 0, 4) + b"\1\2\3\4"),
        ("EDNS version 1 for a name outside the zones",
         header(28, ar=1) + question("example.org") + b"\0" + struct.pack(">HHIH", 41, 1232, 0x00010000, 0)),
        ("EDNS extended rcode and Z bits set",
         header(29, ar=1) + q + b"\0" + struct.pack(">HHIH", 41, 1232, 0x05007FFF, 0)),
    ]


def exchange(sock, addr, wire):
    """Sends `wire`, returns the reply's bytes or None (after TRIES timeouts)."""
    qid = wire[:2]
    for _ in range(TRIES):
        sock.sendto(wire, addr)
        sock.settimeout(TIMEOUT)
        try:
            while True:
                data, _ = sock.recvfrom(65535)
                if data[:2] == qid:
                    return data
        except socket.timeout:
            continue
    return None


def exchange_once(sock, addr, wire):
    """One try, a 0.5 s wait (for messages a server may rightly leave unanswered)."""
    sock.sendto(wire, addr)
    sock.settimeout(0.5)
    try:
        while True:
            data = sock.recvfrom(65535)[0]
            if data[:2] == wire[:2]:
                return data
    except socket.timeout:
        return None


def rrsets_in_order(section):
    """A section as a list of (owner, class, type, TTL, frozenset of RDATA texts)."""
    return [(r.name.to_text().lower(), r.rdclass, r.rdtype, r.ttl,
             frozenset(rd.to_text().lower() for rd in r)) for r in section]


def describe(wire):
    if wire is None:
        return "no reply"
    try:
        return dns.message.from_wire(wire).to_text()
    except Exception as e:  # noqa: BLE001 - any parse failure is shown as raw bytes
        return f"unparsable ({e}): {wire.hex()}"


def summary(wire):
    """What is compared: a tuple, equal for equivalent replies."""
    if wire is None:
        return None
    if len(wire) < 12:
        return ("runt", wire.hex())
    qid, flags, qd, an, ns, ar = struct.unpack(">HHHHHH", wire[:12])
    try:
        m = dns.message.from_wire(wire, ignore_trailing=False)
    except Exception:  # noqa: BLE001
        # Header-level comparison for replies dnspython will not parse (FORMERR without a question).
        return ("header", flags, qd, an, ns, ar, wire[12:].hex())
    opt = None
    if m.edns >= 0:
        opt = (m.edns, m.payload, bool(m.ednsflags & dns.flags.DO), m.rcode())
    return (
        "message",
        flags,
        m.rcode(),
        [q.to_text().lower() for q in m.question],
        rrsets_in_order(m.answer),
        sorted(rrsets_in_order(m.authority)),
        sorted(rrsets_in_order(m.additional)),
        opt,
    )


def zone_names(zone_dir):
    """Every owner name of the zones, every empty non-terminal, and the zones' origins."""
    names = set()
    origins = []
    for file, origin in (("example.test.zone", None), ("10.18.198.in-addr.arpa.zone", "10.18.198.in-addr.arpa.")):
        z = dns.zone.from_file(os.path.join(zone_dir, file), origin=origin, relativize=False)
        origins.append(z.origin)
        for name in z.nodes:
            n = name
            while n != z.origin and len(n) >= len(z.origin):
                names.add(n.to_text())
                n = n.parent()
        names.add(z.origin.to_text())
    return sorted(names), origins


TYPES = ["A", "AAAA", "CNAME", "MX", "NS", "SOA", "TXT", "SRV", "PTR", "CAA", "DS", "ANY", "TYPE999"]


def queries(zone_dir):
    """(description, wire) for every query sent."""
    rng = random.Random(4592)
    names, _ = zone_names(zone_dir)
    out = []
    qid = 1000

    def add(name, rdtype, edns=-1, payload=1232, do=False, what=""):
        nonlocal qid
        qid += 1
        m = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload,
                                   want_dnssec=do)
        m.id = qid
        m.flags = dns.flags.RD
        desc = f"{name} {rdtype} edns={edns} payload={payload} do={do} {what}".strip()
        out.append((desc, m.to_wire()))

    for name in names:
        for t in TYPES:
            add(name, t)
    extra = ["nothere.example.test.", "nx.ent.example.test.", "a.exists.wild.example.test.",
             "z.y.w2.example.test.", "b.c.d.example.test.", "www2.example.test.", "7.10.18.198.in-addr.arpa.",
             "foo.sub.example.test.", "a.b.sub.example.test.", "x.ns.sub.example.test.",
             "anything.wild.example.test.", "a.b.wild.example.test.", "zz.cw.example.test.", "q.w2.example.test.",
             "example.org.", "test.", "org.", "18.198.in-addr.arpa.", "x.example.test.example.org."]
    for name in extra:
        for t in ["A", "AAAA", "MX", "TXT", "NS", "CNAME", "ANY", "DS"]:
            add(name, t)
    # Names made of the zone's labels in random order and depth, random types (a seeded, repeatable mix).
    labels = sorted({label for name in names for label in name.split(".") if label})
    for _ in range(300):
        depth = rng.randint(1, 4)
        suffix = rng.choice(["example.test.", "wild.example.test.", "sub.example.test.", "10.18.198.in-addr.arpa."])
        name = ".".join(rng.choice(labels) for _ in range(depth)) + "." + suffix
        add(name, rng.choice(TYPES), edns=rng.choice([-1, 0]), payload=rng.choice([512, 1232]), what="(random)")
    # Case variants: random case of every name, A and TXT.
    for name in names + extra:
        mixed = "".join(c.upper() if rng.random() < 0.5 else c for c in name)
        for t in ["A", "TXT"]:
            add(mixed, t, what="(case)")
    # EDNS: sizes, DO, version 1, on names with small and large answers.
    for name in ["example.test.", "www.example.test.", "big.example.test.", "huge.example.test.",
                 "nothere.example.test.", "foo.sub.example.test.", "anything.wild.example.test.",
                 "_sip._udp.example.test.", "multi.example.test."]:
        for t in ["A", "TXT", "NS", "MX", "SRV", "ANY"]:
            for payload in [100, 512, 600, 1232, 4096]:
                add(name, t, edns=0, payload=payload, what="(edns)")
            add(name, t, edns=0, payload=1232, do=True, what="(edns)")
            add(name, t, edns=1, payload=1232, what="(edns)")
    return out


def main():
    shunt = (sys.argv[1], int(sys.argv[2]))
    knot = (sys.argv[3], int(sys.argv[4]))
    zone_dir = sys.argv[5]
    family = socket.AF_INET6 if ":" in shunt[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    mismatches = []
    count = 0
    for desc, wire in queries(zone_dir):
        count += 1
        a, b = exchange(sock, shunt, wire), exchange(sock, knot, wire)
        if a is None or b is None or summary(a) != summary(b):
            mismatches.append((desc, a, b))
    differences_seen = []
    for desc, wire in raw_cases():
        count += 1
        # One try each, a shorter wait: several of these are rightly not answered by one server or both.
        a, b = exchange_once(sock, shunt, wire), exchange_once(sock, knot, wire)
        if desc in DIFFERENCES:
            reason, expected = DIFFERENCES[desc]
            got = None if a is None else (struct.unpack(">H", a[2:4])[0] & 0xF, struct.unpack(">H", a[4:6])[0])
            differences_seen.append(f"{desc}: Knot {summary(b)[:4] if b else 'no reply'}; example {got} "
                                    f"({reason})")
            if got != expected:
                mismatches.append((f"{desc} (listed difference: the example must answer {expected})", a, b))
        elif (a is None) != (b is None) or summary(a) != summary(b):
            mismatches.append((desc, a, b))
    print(f"differential: {count} queries to each server, {len(mismatches)} mismatches")
    print(f"listed differences ({len(DIFFERENCES)}):")
    for line in differences_seen:
        print(f"  {line}")
    for desc, a, b in mismatches[:20]:
        print(f"MISMATCH {desc}\n--- example:\n{describe(a)}\n--- knot:\n{describe(b)}\n")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
