#!/usr/bin/env python3
"""Writes bench.test.zone and queries.txt (the DNS comparison's zone and query mix; deterministic, seed 9).
Run from this directory: python3 generate.py"""
import random

random.seed(9)
z = [open("zone-head.txt").read()]
# Big TXT RRsets: about 900 bytes, so no 512-byte reply holds them (TC without EDNS).
for b in ("big1", "big2"):
    for i in range(4):
        z.append(f'{b:<11} TXT     "{b}-{i}-' + "x" * 200 + '"\n')
hosts = []
for i in range(400):
    h = f"h{i:03d}"
    hosts.append(h)
    z.append(f"{h:<11} A       198.18.{22 + i // 250}.{i % 250 + 1}\n")
    if i % 4 != 3:
        z.append(f"{h:<11} AAAA    2001:2::22:{i:x}\n")
open("bench.test.zone", "w").write("".join(z))

q = []
for i in range(1000):
    r = random.random()
    h = random.choice(hosts)
    if r < 0.50:
        q.append(f"{h}.bench.test A")
    elif r < 0.68:
        q.append(f"{h}.bench.test AAAA")  # a quarter of the hosts have none: NODATA
    elif r < 0.72:
        q.append(random.choice(["www.bench.test A", "www.bench.test AAAA", "web.bench.test A"]))
    elif r < 0.80:
        q.append(f"nx{random.randrange(10**6)}.bench.test A")  # NXDOMAIN
    elif r < 0.84:
        q.append("bench.test MX")
    elif r < 0.88:
        q.append(random.choice(["bench.test TXT", "_dmarc.bench.test TXT", "sel1._domainkey.bench.test TXT"]))
    elif r < 0.92:
        q.append(random.choice(["_sip._udp.bench.test SRV", "_ldap._tcp.bench.test SRV",
                                "_xmpp-client._tcp.bench.test SRV"]))
    elif r < 0.95:
        q.append(f"a{random.randrange(1000)}.wild.bench.test A")  # wildcard
    elif r < 0.97:
        q.append(random.choice(["mx1.bench.test A", "ns1.bench.test AAAA", "bench.test NS", "bench.test SOA"]))
    elif r < 0.98:
        q.append(f"host{random.randrange(100)}.sub.bench.test A")  # referral
    else:
        q.append(random.choice(["big1.bench.test TXT", "big2.bench.test TXT"]))  # TC without EDNS
open("queries.txt", "w").write("\n".join(q) + "\n")
