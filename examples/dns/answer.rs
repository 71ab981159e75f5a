//! The authoritative answer (RFC 1034 §4.3.2, RFC 4592 for wildcards, RFC 6891 for EDNS), written in place
//! over the query, without allocation. What it does where the RFCs leave a choice follows Knot DNS 3.2 (the
//! lab's differential test, tests/dns.rs, compares the two):
//!
//! - a query with QR set gets no answer; one shorter than a header, none either;
//! - QDCOUNT != 1 or an unparsable question (truncated, compressed, label too long): FORMERR, header only
//!   (Knot drops those silently; a 12-byte reply amplifies nothing and tells a real client why);
//! - anything wrong after the question (records cut short, bytes after the last one, an OPT outside the
//!   additional section, two OPTs, an OPT not owned by the root, malformed EDNS options): FORMERR with the
//!   question and no OPT (Knot accepts an OPT with a non-root owner; RFC 6891 §6.1.1 says it must be root);
//! - opcode other than QUERY: NOTIMP with the question (Knot answers NOTIFY with NOTAUTH and UPDATE with
//!   FORMERR when not configured for them);
//! - EDNS version above 0: BADVERS, OPT with version 0, no AA;
//! - class other than IN and ANY: REFUSED; QTYPE 0, AXFR, IXFR over UDP: NOTIMP; a name in no zone: REFUSED;
//! - only RD is copied from the query's flags (as Knot: not CD);
//! - ANY gets the node's first RRset by type (RFC 8482 §4.1's "subset", the one Knot picks);
//! - CNAMEs are chased inside the zone (wildcards included) until a name repeats or 16 links, the last
//!   target's answer, NXDOMAIN or NODATA deciding the rcode (RFC 6604); out-of-zone targets end the chain;
//! - additional section: A and AAAA of in-zone NS, MX and SRV targets (synthesised from a wildcard where one
//!   matches), and glue for referrals; records that do not fit are left out, without TC except for the glue
//!   of a referral (RFC 9471, as Knot: TC=1 and the records that fit); answer or authority records that do
//!   not fit the client's size (512 without EDNS, else its size, at least 512, at most `--udp-size`) give
//!   TC=1 with the header, the question and the OPT alone (as Knot 3.2).

use std::net::IpAddr;

use crate::rrl::{Decision, Rrl};
use crate::wire::{self, flag, rcode, rtype, Full, Message, Section, MAX_NAME};
use crate::zone::{Node, Part, Rrset, Zone, Zones};

/// The longest CNAME chain followed.
const MAX_CHAIN: usize = 16;

/// What happened to one query, for the per-worker counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    Truncated,
    Error,
    Slipped,
    RateLimited,
    Ignored,
}

/// The query's EDNS(0) OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edns {
    udp_size: u16,
    version: u8,
    do_bit: bool,
}

/// The counters one worker keeps.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub answered: u64,
    pub truncated: u64,
    pub errors: u64,
    pub slipped: u64,
    pub rate_limited: u64,
    pub ignored: u64,
}

/// One worker's DNS server: the shared zones, its own RRL table and counters.
pub struct Server<Z: AsRef<Zones>> {
    zones: Z,
    udp_size: u16,
    rrl: Rrl,
    pub counters: Counters,
}

/// A parsed query: the question stays where it is in the buffer.
struct Query {
    flags: u16,
    /// Lower-cased QNAME and its length.
    qname: [u8; MAX_NAME],
    qname_len: usize,
    qtype: u16,
    qclass: u16,
    /// Where the question ends (the reply's sections start).
    question_end: usize,
    edns: Option<Edns>,
}

/// Why a query is not answered normally.
enum Bad {
    /// No reply at all.
    Ignore,
    /// FORMERR with the header alone.
    HeaderOnly(u8),
    /// An rcode with the question (and no OPT).
    WithQuestion(u8, usize),
}

impl<Z: AsRef<Zones>> Server<Z> {
    pub fn new(zones: Z, udp_size: u16, rrl: Rrl) -> Self {
        Server { zones, udp_size: udp_size.max(512), rrl, counters: Counters::default() }
    }

    /// The largest reply this server sends: its own EDNS UDP payload size.
    pub fn max_reply_len(&self) -> usize {
        usize::from(self.udp_size)
    }

    /// Answers the query in `buf[..len]` from `src` at `now_ns` (CLOCK_MONOTONIC, for rate limiting) by
    /// writing the reply over it in `buf`. Returns the reply's length, or None to send nothing.
    pub fn answer(&mut self, buf: &mut [u8], len: usize, src: IpAddr, now_ns: u64) -> Option<usize> {
        let (reply, outcome) = self.respond(buf, len, src, now_ns);
        let c = &mut self.counters;
        match outcome {
            Outcome::Answered => c.answered += 1,
            Outcome::Truncated => c.truncated += 1,
            Outcome::Error => c.errors += 1,
            Outcome::Slipped => c.slipped += 1,
            Outcome::RateLimited => c.rate_limited += 1,
            Outcome::Ignored => c.ignored += 1,
        }
        reply
    }

    fn respond(&mut self, buf: &mut [u8], len: usize, src: IpAddr, now_ns: u64) -> (Option<usize>, Outcome) {
        let query = match parse(buf, len) {
            Ok(q) => q,
            Err(Bad::Ignore) => return (None, Outcome::Ignored),
            Err(Bad::HeaderOnly(rc)) => {
                let flags = be16(buf, 2);
                if let Some(qdcount) = buf.get_mut(4..6) {
                    qdcount.fill(0);
                }
                let m = Message::new(buf, wire::HEADER_LEN, wire::HEADER_LEN, None);
                // QDCOUNT is 0: the question is not echoed.
                return (Some(m.finish(reply_flags(flags, false, rc))), Outcome::Error);
            }
            Err(Bad::WithQuestion(rc, question_end)) => {
                let flags = be16(buf, 2);
                let m = Message::new(buf, question_end, question_end, None);
                return (Some(m.finish(reply_flags(flags, false, rc))), Outcome::Error);
            }
        };
        let client_size = match query.edns {
            Some(e) => usize::from(e.udp_size.max(512)),
            None => 512,
        };
        let limit = client_size.min(usize::from(self.udp_size));
        let opt_room = if query.edns.is_some() { wire::OPT_LEN } else { 0 };

        match self.rrl.check(src, now_ns) {
            Decision::Send => {}
            Decision::Drop => return (None, Outcome::RateLimited),
            Decision::Slip => {
                // Header, question, OPT: no larger than the query, and TC sends a real client to TCP.
                let mut m = Message::new(buf, query.question_end, limit, None);
                let flags = reply_flags(query.flags, false, rcode::NOERROR) | flag::TC;
                if let Some(e) = query.edns {
                    let _ = m.put_opt(self.udp_size, 0, e.do_bit);
                }
                return (Some(m.finish(flags)), Outcome::Slipped);
            }
        }

        let mut m = Message::new(buf, query.question_end, limit, Some(wire::HEADER_LEN));
        m.reserve(opt_room);
        let (rc, aa, rcode_high, truncated) = if query.edns.is_some_and(|e| e.version > 0) {
            (rcode::NOERROR, false, rcode::BADVERS_HIGH, false)
        } else if query.qclass != wire::CLASS_IN && query.qclass != wire::CLASS_ANY {
            (rcode::REFUSED, false, 0, false)
        } else if matches!(query.qtype, 0 | rtype::AXFR | rtype::IXFR) {
            (rcode::NOTIMP, false, 0, false)
        } else {
            let qname = query.qname.get(..query.qname_len).unwrap_or(&[0]);
            match self.zones.as_ref().find(qname) {
                None => (rcode::REFUSED, false, 0, false),
                Some(zone) => {
                    let mark = m.mark();
                    let (rc, aa, fit) = resolve(zone, qname, query.qtype, &mut m);
                    if fit == Fit::Overflow {
                        m.reset(mark);
                    }
                    (rc, aa, 0, fit != Fit::All)
                }
            }
        };
        m.unreserve(opt_room);
        if let Some(e) = query.edns {
            let _ = m.put_opt(self.udp_size, rcode_high, e.do_bit);
        }
        let mut flags = reply_flags(query.flags, aa, rc);
        if truncated {
            flags |= flag::TC;
        }
        let outcome = match (truncated, rc) {
            (true, _) => Outcome::Truncated,
            (false, rcode::NOERROR | rcode::NXDOMAIN) if rcode_high == 0 => Outcome::Answered,
            _ => Outcome::Error,
        };
        (Some(m.finish(flags)), outcome)
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    wire::be16(b, at).unwrap_or(0)
}

/// The reply's flags: QR, the query's opcode and RD, AA as given, the rcode.
fn reply_flags(query_flags: u16, aa: bool, rc: u8) -> u16 {
    let mut f = flag::QR | (query_flags & (flag::OPCODE_MASK | flag::RD)) | u16::from(rc & 0xF);
    if aa {
        f |= flag::AA;
    }
    f
}

/// Reads the query in `buf[..len]`.
fn parse(buf: &[u8], len: usize) -> Result<Query, Bad> {
    let msg = buf.get(..len).ok_or(Bad::Ignore)?;
    if msg.len() < wire::HEADER_LEN {
        return Err(Bad::Ignore);
    }
    let flags = be16(msg, 2);
    if flags & flag::QR != 0 {
        return Err(Bad::Ignore);
    }
    let counts = [be16(msg, 4), be16(msg, 6), be16(msg, 8), be16(msg, 10)];
    if counts[0] != 1 {
        return Err(Bad::HeaderOnly(rcode::FORMERR));
    }
    let mut qname = [0u8; MAX_NAME];
    let (qname_len, name_end) =
        wire::read_question_name(msg, wire::HEADER_LEN, &mut qname).ok_or(Bad::HeaderOnly(rcode::FORMERR))?;
    let (Some(qtype), Some(qclass)) = (wire::be16(msg, name_end), wire::be16(msg, name_end + 2)) else {
        return Err(Bad::HeaderOnly(rcode::FORMERR));
    };
    let question_end = name_end + 4;
    if flags & flag::OPCODE_MASK != 0 {
        return Err(Bad::WithQuestion(rcode::NOTIMP, question_end));
    }
    let formerr = Bad::WithQuestion(rcode::FORMERR, question_end);
    let mut pos = question_end;
    let mut edns = None;
    for (section, &count) in counts.iter().skip(1).enumerate() {
        for _ in 0..count {
            let (end, root_owner) = wire::skip_name(msg, pos).ok_or(Bad::WithQuestion(rcode::FORMERR, question_end))?;
            let (Some(rt), Some(class), Some(ttl), Some(rdlen)) =
                (wire::be16(msg, end), wire::be16(msg, end + 2), wire::be32(msg, end + 4), wire::be16(msg, end + 8))
            else {
                return Err(formerr);
            };
            let rdata_at = end + 10;
            let rdata = msg
                .get(rdata_at..rdata_at + usize::from(rdlen))
                .ok_or(Bad::WithQuestion(rcode::FORMERR, question_end))?;
            if rt == rtype::OPT {
                // RFC 6891 §6.1.1: one OPT, in the additional section, owned by the root.
                if section != 2 || edns.is_some() || !root_owner || !options_well_formed(rdata) {
                    return Err(formerr);
                }
                edns = Some(Edns { udp_size: class, version: (ttl >> 16) as u8, do_bit: ttl & wire::DO_BIT != 0 });
            }
            pos = rdata_at + usize::from(rdlen);
        }
    }
    if pos != msg.len() {
        return Err(formerr);
    }
    Ok(Query { flags, qname, qname_len, qtype, qclass, question_end, edns })
}

/// Whether the OPT RDATA is a sequence of whole {code, length, data} options (RFC 6891 §6.1.2).
fn options_well_formed(mut rdata: &[u8]) -> bool {
    while !rdata.is_empty() {
        let Some(len) = wire::be16(rdata, 2) else { return false };
        match rdata.get(4 + usize::from(len)..) {
            Some(rest) => rdata = rest,
            None => return false,
        }
    }
    true
}

/// What the zone says about a name.
enum Found<'z> {
    /// The name's node, or the wildcard `*.<closest encloser>` that synthesises it.
    Node(&'z Node),
    /// The name is at or below a zone cut: the NS RRset and its owner.
    Referral(&'z [u8], &'z Rrset),
    NxDomain,
}

/// Finds `name` (lower-case wire format, within the zone) as RFC 1034 §4.3.2 step 3 and RFC 4592 §3.3.1 do.
fn lookup<'z>(zone: &'z Zone, name: &[u8], qtype: u16) -> Found<'z> {
    // The suffixes of `name` from the one below the origin down to the name itself.
    let mut starts = [0usize; 128];
    let mut count = 0;
    let mut at = 0;
    let own = wire::label_count(name);
    let below_origin = own.saturating_sub(wire::label_count(&zone.origin));
    while count < below_origin {
        let Some(slot) = starts.get_mut(count) else { return Found::NxDomain };
        *slot = at;
        count += 1;
        at += 1 + usize::from(name.get(at).copied().unwrap_or(0));
    }
    let mut encloser: &[u8] = &zone.origin;
    for i in (0..count).rev() {
        let start = starts.get(i).copied().unwrap_or(0);
        let suffix = name.get(start..).unwrap_or(&[0]);
        let Some((owner, node)) = zone.nodes.get_key_value(suffix) else {
            return wildcard(zone, encloser);
        };
        if let Some(ns) = node.get(rtype::NS) {
            // A zone cut; the DS RRset at the cut itself belongs to the parent (RFC 4035 §3.1.4.1).
            if !(i == 0 && qtype == rtype::DS) {
                return Found::Referral(owner, ns);
            }
        }
        encloser = owner;
    }
    match zone.nodes.get(name) {
        Some(node) => Found::Node(node),
        None => Found::NxDomain,
    }
}

/// The source of synthesis `*.<encloser>` if the zone has one.
fn wildcard<'z>(zone: &'z Zone, encloser: &[u8]) -> Found<'z> {
    let mut name = [0u8; MAX_NAME];
    let Some(rest) = name.get_mut(2..2 + encloser.len()) else { return Found::NxDomain };
    rest.copy_from_slice(encloser);
    if let Some(star) = name.get_mut(..2) {
        star.copy_from_slice(&[1, b'*']);
    }
    match zone.nodes.get(name.get(..2 + encloser.len()).unwrap_or(&[])) {
        Some(node) => Found::Node(node),
        None => Found::NxDomain,
    }
}

/// How much of an answer fit the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    All,
    /// A referral whose glue did not all fit: TC=1 with the records that did (RFC 9471, as Knot).
    GlueLeftOut,
    /// The answer or authority section did not fit: TC=1 with the header, question and OPT alone.
    Overflow,
}

/// Writes the answer for `qname`/`qtype` in `zone`; returns its rcode and AA, and how much of it fit (the
/// rcode and AA are those of the whole answer also when it did not).
fn resolve(zone: &Zone, qname: &[u8], qtype: u16, m: &mut Message<'_>) -> (u8, bool, Fit) {
    let mut name: &[u8] = qname;
    let mut seen: [&[u8]; MAX_CHAIN] = [&[]; MAX_CHAIN];
    for link in 0..=MAX_CHAIN {
        match lookup(zone, name, qtype) {
            Found::Referral(cut, ns) => {
                // A referral for the query itself is not authoritative; one at the end of a chain is.
                let aa = link > 0;
                if put_rrset(m, Section::Authority, cut, ns, ns.ttl).is_err() {
                    return (rcode::NOERROR, aa, Fit::Overflow);
                }
                let fit = if additional(zone, m, ns) { Fit::All } else { Fit::GlueLeftOut };
                return (rcode::NOERROR, aa, fit);
            }
            Found::NxDomain => return (rcode::NXDOMAIN, true, fits(put_soa(zone, m))),
            Found::Node(node) => {
                if qtype != rtype::CNAME && qtype != rtype::ANY {
                    if let Some(cname) = node.get(rtype::CNAME) {
                        if put_rrset(m, Section::Answer, name, cname, cname.ttl).is_err() {
                            return (rcode::NOERROR, true, Fit::Overflow);
                        }
                        let Some(target) = cname.rdata.first().and_then(|r| r.target()) else {
                            return (rcode::NOERROR, true, Fit::All);
                        };
                        if let Some(slot) = seen.get_mut(link) {
                            *slot = name;
                        }
                        let looped = seen.iter().take(link + 1).any(|s| *s == target);
                        if looped || !wire::is_within(target, &zone.origin) {
                            return (rcode::NOERROR, true, Fit::All);
                        }
                        name = target;
                        continue;
                    }
                }
                let rrset = if qtype == rtype::ANY { node.rrsets.first() } else { node.get(qtype) };
                let fit = match rrset {
                    Some(rrset) => {
                        let fit = fits(put_rrset(m, Section::Answer, name, rrset, rrset.ttl));
                        if fit == Fit::All {
                            // Additional data left out of an answer is not worth a TC (as Knot).
                            let _ = additional(zone, m, rrset);
                        }
                        fit
                    }
                    None => fits(put_soa(zone, m)),
                };
                return (rcode::NOERROR, true, fit);
            }
        }
    }
    (rcode::NOERROR, true, Fit::All)
}

fn fits(written: Result<(), Full>) -> Fit {
    match written {
        Ok(()) => Fit::All,
        Err(Full) => Fit::Overflow,
    }
}

/// The apex SOA in the authority section of a negative answer (RFC 2308 §3).
fn put_soa(zone: &Zone, m: &mut Message<'_>) -> Result<(), Full> {
    put_rrset(m, Section::Authority, &zone.origin, &zone.soa, zone.negative_ttl)
}

/// Writes every record of `rrset` owned by `owner`, or none (rolled back) with `Err(Full)`.
fn put_rrset(m: &mut Message<'_>, section: Section, owner: &[u8], rrset: &Rrset, ttl: u32) -> Result<(), Full> {
    let mark = m.mark();
    for rdata in &rrset.rdata {
        let written = m.put_record(section, owner, rrset.rtype, ttl, |m| {
            for part in &rdata.0 {
                match part {
                    Part::Bytes(b) => m.put_bytes(b)?,
                    Part::Name { name, compress } => m.put_name(name, *compress)?,
                }
            }
            Ok(())
        });
        if written.is_err() {
            m.reset(mark);
            return Err(Full);
        }
    }
    Ok(())
}

/// Additional-section processing (RFC 1035 §3.3.2, 3.3.9, RFC 2782): A and AAAA of the in-zone names the
/// NS, MX or SRV records point at (glue below a cut included, wildcards expanded). What does not fit is left
/// out; returns false then.
fn additional(zone: &Zone, m: &mut Message<'_>, rrset: &Rrset) -> bool {
    if !matches!(rrset.rtype, rtype::NS | rtype::MX | rtype::SRV) {
        return true;
    }
    for rdata in &rrset.rdata {
        let Some(target) = rdata.target() else { continue };
        // The name itself (glue below a cut included), else what a wildcard synthesises for it (as Knot).
        let node = match zone.nodes.get(target) {
            Some(node) => node,
            None if wire::is_within(target, &zone.origin) => match lookup(zone, target, rtype::A) {
                Found::Node(node) => node,
                Found::Referral(..) | Found::NxDomain => continue,
            },
            None => continue,
        };
        for t in [rtype::A, rtype::AAAA] {
            if let Some(addresses) = node.get(t) {
                if put_rrset(m, Section::Additional, target, addresses, addresses.ttl).is_err() {
                    return false;
                }
            }
        }
    }
    true
}
