//! DNS payloads for the open-loop and ping-pong generators (`--dns-queries FILE`): the requests cycle through
//! the messages of a query file in dnsperf's format (`name TYPE` per line), each with a fresh 16-bit ID, and
//! every reply is checked before it counts.
//!
//! A DNS reply carries none of shunt-bench's timestamps, so the sender keeps them: request `seq` goes out with
//! ID `seq mod 65536`, and slot ID of a table of 65,536 remembers (seq, intended, sent time). A reply counts as
//! the answer to request `seq` when its ID's slot holds `seq`, QR is set, the opcode is QUERY, and its question
//! section is byte for byte the question sent (names are sent lower-case). Its rcode must be NOERROR or NXDOMAIN
//! and, per message of the file, the same in every reply (the first reply to a message sets what the others must
//! say): anything else is a `bad_rcode`. Replies with TC set are counted (`truncated`): a UDP client would retry
//! over TCP; here they count as answers. A reply that comes back after 65,536 later requests (0.33 s at 200k/s)
//! finds its slot reused and counts as foreign (and its request as lost).

use std::{path::Path, sync::Arc};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Length of the DNS header.
const HEADER: usize = 12;

/// The query file, encoded once.
#[derive(Debug)]
pub struct Queries {
    /// Wire messages (ID 0), in file order.
    msgs: Vec<Vec<u8>>,
}

/// Record type mnemonics the files use (RFC 1035 and later).
fn qtype(t: &str) -> Option<u16> {
    Some(match t.to_ascii_uppercase().as_str() {
        "A" => 1,
        "NS" => 2,
        "CNAME" => 5,
        "SOA" => 6,
        "PTR" => 12,
        "HINFO" => 13,
        "MX" => 15,
        "TXT" => 16,
        "AAAA" => 28,
        "SRV" => 33,
        "NAPTR" => 35,
        "DS" => 43,
        "DNSKEY" => 48,
        "CAA" => 257,
        "ANY" => 255,
        other => other.strip_prefix("TYPE")?.parse().ok()?,
    })
}

/// The wire form of a query for `name` / `ty` (ID 0, no flags, no EDNS: as dnsperf sends without `-e`).
pub fn encode_query(name: &str, ty: u16) -> anyhow::Result<Vec<u8>> {
    let mut m = vec![0u8; HEADER];
    m[5] = 1; // QDCOUNT
    let name = name.trim_end_matches('.');
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                bail!("bad label in {name:?}");
            }
            m.push(label.len() as u8);
            m.extend(label.to_ascii_lowercase().bytes());
        }
    }
    m.push(0);
    if m.len() - HEADER > 255 {
        bail!("name {name:?} longer than 255 bytes");
    }
    m.extend(ty.to_be_bytes());
    m.extend(1u16.to_be_bytes()); // IN
    Ok(m)
}

impl Queries {
    /// Parses a dnsperf query file: `name TYPE` per line; blank lines and lines starting with `#` or `;` skipped.
    pub fn parse(text: &str) -> anyhow::Result<Queries> {
        let mut msgs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
                continue;
            }
            let mut w = l.split_whitespace();
            let (Some(name), Some(ty), None) = (w.next(), w.next(), w.next()) else {
                bail!("line {}: expected `name TYPE`, got {l:?}", i + 1);
            };
            let t = qtype(ty).with_context(|| format!("line {}: unknown type {ty:?}", i + 1))?;
            msgs.push(encode_query(name, t).with_context(|| format!("line {}", i + 1))?);
        }
        if msgs.is_empty() {
            bail!("no queries in the file");
        }
        Ok(Queries { msgs })
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> anyhow::Result<Arc<Queries>> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Arc::new(Queries::parse(&text).with_context(|| format!("parsing {}", path.display()))?))
    }

    /// Messages in the file.
    pub fn count(&self) -> usize {
        self.msgs.len()
    }

    /// Index of request `seq`'s message.
    fn index(&self, seq: u64) -> usize {
        (seq % self.msgs.len() as u64) as usize
    }

    /// The largest message.
    pub fn max_len(&self) -> usize {
        self.msgs.iter().map(Vec::len).max().unwrap_or(0)
    }
}

/// Validation counts of a DNS run (in the report's `dns`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCounts {
    /// Replies accepted with rcode NOERROR.
    pub noerror: u64,
    /// Replies accepted with rcode NXDOMAIN.
    pub nxdomain: u64,
    /// Replies whose rcode was neither NOERROR nor NXDOMAIN, or not the one earlier replies to the same message
    /// had (not counted as received).
    pub bad_rcode: u64,
    /// Replies with TC (truncated) set.
    pub truncated: u64,
    /// Replies whose ID matched no outstanding request or whose question was not the one sent (counted foreign).
    pub mismatched: u64,
}

impl DnsCounts {
    /// Sums another thread's counts into these.
    pub fn add(&mut self, o: &DnsCounts) {
        self.noerror += o.noerror;
        self.nxdomain += o.nxdomain;
        self.bad_rcode += o.bad_rcode;
        self.truncated += o.truncated;
        self.mismatched += o.mismatched;
    }
}

const EMPTY: u64 = u64::MAX;

/// The sender's side: which request each ID stands for, and what each message's replies said.
pub struct DnsState {
    queries: Arc<Queries>,
    /// Per ID: (seq, intended ns, sent ns); seq == EMPTY when free.
    slots: Vec<(u64, u64, u64)>,
    /// Per message: the rcode its first reply had (0xff: none yet).
    expected: Vec<u8>,
    /// Counts.
    pub counts: DnsCounts,
}

/// What a reply turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The answer to request `seq` (intended, sent ns).
    Answer { seq: u64, intended_ns: u64, sent_ns: u64 },
    /// The answer to `seq`, but a wrong rcode.
    BadRcode { seq: u64 },
    /// Not an answer to an outstanding request.
    Foreign,
}

impl DnsState {
    /// A fresh table for `queries`.
    pub fn new(queries: Arc<Queries>) -> DnsState {
        let n = queries.count();
        DnsState { queries, slots: vec![(EMPTY, 0, 0); 65_536], expected: vec![0xff; n], counts: DnsCounts::default() }
    }

    /// Writes request `seq`'s message into `buf` and remembers its times; returns the length.
    pub fn encode(&mut self, buf: &mut [u8], seq: u64, intended_ns: u64, sent_ns: u64) -> usize {
        let m = &self.queries.msgs[self.queries.index(seq)];
        let n = m.len().min(buf.len());
        buf[..n].copy_from_slice(&m[..n]);
        let id = (seq & 0xffff) as u16;
        buf[0..2].copy_from_slice(&id.to_be_bytes());
        self.slots[usize::from(id)] = (seq, intended_ns, sent_ns);
        n
    }

    /// A request in `buf` is sent again later (after a partial send): its send time moves.
    pub fn restamp(&mut self, buf: &[u8], sent_ns: u64) {
        let id = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
        self.slots[id].2 = sent_ns;
    }

    /// Checks a reply.
    pub fn check(&mut self, reply: &[u8]) -> Verdict {
        if reply.len() < HEADER {
            self.counts.mismatched += 1;
            return Verdict::Foreign;
        }
        let id = usize::from(u16::from_be_bytes([reply[0], reply[1]]));
        let (flags, rcode) = (reply[2], reply[3] & 0x0f);
        let (seq, intended_ns, sent_ns) = self.slots[id];
        let qr = flags & 0x80 != 0;
        let opcode = (flags >> 3) & 0x0f;
        if seq == EMPTY || !qr || opcode != 0 {
            self.counts.mismatched += 1;
            return Verdict::Foreign;
        }
        let idx = self.queries.index(seq);
        let sent = &self.queries.msgs[idx];
        // QDCOUNT and the question section, as sent.
        if reply.len() < sent.len() || reply[4..6] != sent[4..6] || reply[HEADER..sent.len()] != sent[HEADER..] {
            self.counts.mismatched += 1;
            return Verdict::Foreign;
        }
        if flags & 0x02 != 0 {
            self.counts.truncated += 1;
        }
        let ok = match rcode {
            0 | 3 => match self.expected[idx] {
                0xff => {
                    self.expected[idx] = rcode;
                    true
                }
                e => e == rcode,
            },
            _ => false,
        };
        if !ok {
            self.counts.bad_rcode += 1;
            return Verdict::BadRcode { seq };
        }
        if rcode == 0 {
            self.counts.noerror += 1;
        } else {
            self.counts.nxdomain += 1;
        }
        Verdict::Answer { seq, intended_ns, sent_ns }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(q: &[u8], rcode: u8, tc: bool) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2] = 0x84 | if tc { 0x02 } else { 0 }; // QR AA (TC)
        r[3] = rcode;
        r.extend([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, 1]); // an answer the check ignores
        r
    }

    #[test]
    fn parses_dnsperf_files() {
        let q = Queries::parse("# comment\nwww.Example.test A\n\n; other\nexample.test. MX\nx.test TYPE99\n").unwrap();
        assert_eq!(q.count(), 3);
        assert_eq!(&q.msgs[0][HEADER..], b"\x03www\x07example\x04test\x00\x00\x01\x00\x01", "lower-cased");
        assert_eq!(&q.msgs[1][q.msgs[1].len() - 4..], &[0, 15, 0, 1]);
        assert_eq!(&q.msgs[2][q.msgs[2].len() - 4..], &[0, 99, 0, 1]);
        assert!(Queries::parse("www A extra\n").is_err());
        assert!(Queries::parse("www BOGUS\n").is_err());
        assert!(Queries::parse("# nothing\n").is_err());
        assert!(Queries::parse(&format!("{}.test A\n", "a".repeat(64))).is_err());
    }

    #[test]
    fn ids_cycle_and_replies_are_checked() {
        let q = Arc::new(Queries::parse("www.example.test A\nnothere.example.test A\n").unwrap());
        let mut s = DnsState::new(q);
        let mut buf = [0u8; 512];
        let n = s.encode(&mut buf, 70_000, 10, 11);
        assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), (70_000 % 65_536) as u16);
        let query = buf[..n].to_vec();
        s.restamp(&query, 15);
        assert_eq!(s.check(&reply(&query, 0, false)), Verdict::Answer { seq: 70_000, intended_ns: 10, sent_ns: 15 });
        // The same message (70_002 % 2 == 0) must keep its rcode; another may differ.
        let n2 = s.encode(&mut buf, 70_002, 20, 20);
        let q2 = buf[..n2].to_vec();
        assert_eq!(s.check(&reply(&q2, 3, false)), Verdict::BadRcode { seq: 70_002 });
        let n3 = s.encode(&mut buf, 70_001, 30, 30);
        let q3 = buf[..n3].to_vec();
        assert!(matches!(s.check(&reply(&q3, 3, true)), Verdict::Answer { seq: 70_001, .. }));
        // SERVFAIL is never right.
        let n4 = s.encode(&mut buf, 70_004, 40, 40);
        let q4 = buf[..n4].to_vec();
        assert_eq!(s.check(&reply(&q4, 2, false)), Verdict::BadRcode { seq: 70_004 });
        // Not a response, another question, an unknown ID, too short.
        assert_eq!(s.check(&q4), Verdict::Foreign);
        let mut other = reply(&q4, 0, false);
        other[HEADER + 1] = b'x';
        assert_eq!(s.check(&other), Verdict::Foreign);
        let mut unknown = reply(&q4, 0, false);
        unknown[0..2].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(s.check(&unknown), Verdict::Foreign);
        assert_eq!(s.check(&[0u8; 5]), Verdict::Foreign);
        assert_eq!(
            s.counts,
            DnsCounts { noerror: 1, nxdomain: 1, bad_rcode: 2, truncated: 1, mismatched: 4 },
            "{:?}",
            s.counts
        );
    }
}
